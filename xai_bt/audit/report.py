"""The focus audit's report: one self-contained HTML file (figures embedded as base64 PNG).

:func:`render_report` takes the audit's `summary.json` content and its gallery (best, typical and worst scans
per method) and returns the page. It opens with what the audit says (:func:`conclusions`: plain sentences
computed from the summary's numbers, never written by hand), then which scans were audited and what "unseen"
means, tables of every score with bootstrap 95% CIs (overall, per class, per plane, by correctness), the chance
level, shortcut shares, faithfulness and randomisation results when measured, and the gallery with the mask
outlined. Methods, classes and scores appear by their display names (:func:`xai_bt.names.display_name`).
"""
from __future__ import annotations

import html
from typing import Any, Sequence

import numpy as np

from xai_bt.audit.localisation import LOCALISATION_SCORES
from xai_bt.audit.summary import GALLERY_KINDS, coinciding_methods
from xai_bt.names import display_name
from xai_bt.plots.audit import (
    faithfulness_figure,
    gallery_figure,
    localisation_figure,
    sanity_figure,
    score_label,
    within,
)
from xai_bt.plots.style import figure_png
from xai_bt.review.html import img_tag

__all__ = ["conclusions", "render_report"]

#: Randomisation: final Spearman this close to the 0.5 fail line is called narrow.
NARROW = 0.1
#: A method putting more than this share of its attribution outside the head is named as a shortcut risk.
OUTSIDE_HEAD = 0.2
#: Which way each faithfulness score is better (True: higher).
FAITH_HIGHER = {"deletion_auc": False, "insertion_auc": True, "road_morf": False, "road_lerf": True}

DEFINITIONS = """
<dl>
<dt>Pointing game</dt><dd>1 if the map's maximum lies in the mask or within {tol} px of it (model
resolution, {size} px), else 0 (Zhang et al. 2018). Undefined for a constant map. A randomly placed peak
scores about the mask's area fraction (a little more with the tolerance).</dd>
<dt>Energy (mass inside the tumor)</dt><dd>Share of the map's positive attribution inside the mask, the energy
pointing game of Wang et al. 2020. A uniform map scores the mask's area fraction: compare with the chance row.</dd>
<dt>Relevance rank accuracy</dt><dd>With K = mask pixels, the fraction of the K highest-ranked pixels inside
the mask (Arras et al. 2022); ties averaged. Chance = mask area fraction.</dd>
<dt>Top-{topk}% IoU</dt><dd>IoU of the {topk}% highest pixels with the mask: also penalises maps whose hot spot
is much larger or smaller than the tumor.</dd>
<dt>Shortcut shares</dt><dd>Share of positive attribution outside the head (Otsu head mask) and in the four
corner squares (10% of the side): evidence where no tumor can be.</dd>
<dt>Faithfulness</dt><dd>Deletion / insertion AUC of the explained class's probability as the map's top
pixels are blurred away / restored (Petsiuk et al. 2018); ROAD mean probability as {road}% of pixels are
imputed from their neighbours, most-relevant-first (MoRF) or least-relevant-first (LeRF) (Rong et al. 2022).</dd>
<dt>Randomisation check</dt><dd>Cascading model-parameter randomisation (Adebayo et al. 2018): Spearman rank
correlation of maps after re-initialising the network from the top down to each block with the trained
model's maps. A method whose maps still correlate above 0.5 after full randomisation fails.</dd>
</dl>
<p>All intervals are 95% percentile-bootstrap intervals over scans (1,000 resamples); n counts the scans a
score is defined on.</p>
"""

CSS = """
body { font-family: -apple-system, 'DejaVu Sans', Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h2 { margin-top: 1.6em; } h3 { margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 0.8em 0 1.4em; font-size: 0.88em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.7em; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
td { font-variant-numeric: tabular-nums; white-space: nowrap; }
th.group { text-align: center; border-bottom: 1px solid #bbb; }
.pivot thead tr + tr th { text-align: right; }
thead th { border-bottom: 2px solid #888; }
img { max-width: 100%; }
.note { background: #f4f6f8; border-left: 4px solid #0072B2; padding: 0.6em 1em; }
.says { background: #fffbea; border-left: 4px solid #E69F00; padding: 0.4em 1.2em 0.4em 0.6em; }
.says li { margin: 0.45em 0; }
.muted { color: #777; font-size: 0.85em; }
.run th { text-align: left; font-weight: normal; color: #555; white-space: nowrap; }
.run td { white-space: normal; } .run code { word-break: break-all; }
details { margin: 0.5em 0 1.2em; } summary { cursor: pointer; color: #0072B2; }
dt { font-weight: bold; margin-top: 0.4em; }
"""


# ------------------------------------------------------------------------------------------------ page
def render_report(summary: dict[str, Any], gallery: dict[str, list[dict[str, Any]]]) -> str:
    """The whole report as an HTML string."""
    s = summary
    parts = [_says(s), _selection(s), _localisation(s), _groups(s), _shortcuts(s), _faithfulness(s), _sanity(s),
             _gallery(s, gallery), _run(s), "<h2>Definitions</h2>" + DEFINITIONS.format(
                 tol=s["settings"]["tolerance_px"], size=s["input_size"], topk=f"{100 * _top_k(s):g}",
                 road=", ".join(map(str, s["settings"]["road_percentages"])))]
    title = f"Focus audit: {html.escape(s['model_name'])}"
    lead = (f"<p class='muted'>Does each explanation method's heatmap point at the expert tumor mask? "
            f"{s['n_images']} scans of {html.escape(str(s['data']))}, {len(s['methods'])} methods; "
            f"model {html.escape(str(s['model']))}.</p>")
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{CSS}</style></head><body>\n<h1>{title}</h1>\n{lead}\n" + "\n".join(p for p in parts if p)
            + "\n</body></html>\n")


def _top_k(s: dict[str, Any]) -> float:
    return float(s["settings"].get("top_k", 0.05))


def _name(name: object) -> str:
    """A display name, HTML-escaped."""
    return html.escape(display_name(name))


def _label(s: dict[str, Any], score: str) -> str:
    return html.escape(score_label(score, _top_k(s)))


# ------------------------------------------------------------------------------------------ conclusions
def conclusions(summary: dict[str, Any]) -> list[str]:
    """What the audit says, one HTML sentence group per finding, every number read from `summary`: the
    explanation to show first, localisation against chance, classes, randomisation, coinciding methods,
    faithfulness, shortcuts, scans."""
    found = [_finding_recommendation(summary), _finding_localisation(summary), _finding_classes(summary), _finding_randomisation(summary),
             _finding_identical(summary), _finding_faithfulness(summary), _finding_shortcuts(summary),
             _finding_scans(summary)]
    return [f for f in found if f]


def _finding_recommendation(s: dict[str, Any]) -> str:
    """The explanation `audit.recommend` picks, and the better localisers it passed over and why."""
    from xai_bt.audit.recommend import recommend

    rec = recommend(s)
    pg = rec["pointing_game"]
    if not rec["passed_checks"]:
        return (f"<b>No method passed the faithfulness and randomisation checks;</b> the best localiser, "
                f"{_name(rec['method'])} (pointing game {_with_ci(pg)}), is shown first, with that caveat.")
    text = (f"<b>Shown first: {_name(rec['method'])}</b>, the best localiser among the methods that are "
            "faithful (removing their most relevant pixels first hurts the score more than removing their least "
            "relevant first, by deletion / insertion and by ROAD) and pass the randomisation check: pointing game "
            f"{_with_ci(pg)}. Stored in the bundle, it is what explain, report and serve show unless told otherwise.")
    better = [r for r in rec["candidates"] if r["pointing_game"]["mean"] > pg["mean"]]
    why = [f"{_name(r['method'])} ({r['pointing_game']['mean']:.3f}: "
           + _join([w for w, bad in (("fails the randomisation check", r["passes_randomisation"] is False),
                                     ("not faithful", r["faithful"] is False)) if bad]) + ")" for r in better]
    return text + (f" Passed over although they localise better: {_join(why)}." if why else "")


def _says(s: dict[str, Any]) -> str:
    items = "".join(f"<li>{c}</li>" for c in conclusions(s))
    return f"<h2>What this audit says</h2><ul class='says'>{items}</ul>"


def _mean(e: dict[str, Any] | None) -> float | None:
    return None if not e or e.get("mean") is None else float(e["mean"])


def _with_ci(e: dict[str, Any], n: bool = True) -> str:
    """`0.534 (95% CI 0.477-0.591, n = 281)` of a summarise() entry."""
    text = f"{e['mean']:.3f} (95% CI {e['low']:.3f}&ndash;{e['high']:.3f}"
    return text + (f", n = {e['n_valid']})" if n else ")")


def _join(words: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _distinct(s: dict[str, Any]) -> list[str]:
    """The methods less the second of each pair that gives the same numbers (counted once)."""
    twins = {b for _, b, _ in coinciding_methods(s)}
    return [m for m in s["methods"] if m not in twins]


def _ranked(s: dict[str, Any], score: str, methods: Sequence[str] | None = None) -> list[str]:
    """Methods with a defined overall `score`, highest mean first (ties in method order)."""
    have = [m for m in (methods or s["methods"]) if _mean(s["scores"][m]["all"][score]) is not None]
    return sorted(have, key=lambda m: -s["scores"][m]["all"][score]["mean"])


def _finding_localisation(s: dict[str, Any]) -> str:
    """Which method points at the tumor most often, against chance, and how much of its map lies there."""
    ranked = _ranked(s, "pointing_game", _distinct(s))
    chance = _mean(s["chance"]["all"]["mask_fraction"])
    if not ranked or chance is None:
        return ""
    best = ranked[0]
    pg = s["scores"][best]["all"]["pointing_game"]
    text = (f"<b>{_name(best)} localises best:</b> pointing game {_with_ci(pg)}, i.e. its map's peak lies in the "
            f"tumor mask on {100 * pg['mean']:.0f}% of the scans, against about {100 * chance:.1f}% for a randomly "
            f"placed peak (the mask's mean area fraction; a little more with the {s['settings']['tolerance_px']:g} px "
            "tolerance).")
    if len(ranked) > 1:
        second = s["scores"][ranked[1]]["all"]["pointing_game"]
        settled = second["high"] < pg["low"]
        text += (f" Next: {_name(ranked[1])}, {_with_ci(second, n=False)}"
                 + ("; the intervals do not overlap." if settled else "; the intervals overlap, so the order of "
                    "these two is not settled.")
                 + f" Last: {_name(ranked[-1])}, {s['scores'][ranked[-1]]['all']['pointing_game']['mean']:.3f}.")
    return text + " " + _focus(s, chance)


def _focus(s: dict[str, Any], chance: float) -> str:
    """Whether the maps' mass lies in the tumor: the highest energy against chance, and who is not above chance."""
    by_energy = _ranked(s, "energy_pointing_game", _distinct(s))
    if not by_energy:
        return ""
    top = s["scores"][by_energy[0]]["all"]["energy_pointing_game"]
    mostly_outside = top["mean"] < 0.5
    who = "Even the method with the most attribution inside the mask" if mostly_outside else "The best method"
    text = (f"{who}, {_name(by_energy[0])}, puts {100 * top['mean']:.1f}% of its positive attribution there (energy "
            f"{top['mean']:.3f}, 95% CI {top['low']:.3f}&ndash;{top['high']:.3f}; {top['mean'] / chance:.1f}&times; the "
            f"{chance:.3f} of a uniform map)")
    text += (": <b>the maps mostly look outside the tumor.</b>" if mostly_outside
             else ": most of its map lies on the tumor.")
    below = [m for m in by_energy if s["scores"][m]["all"]["energy_pointing_game"]["low"] <= chance]
    if below:
        text += f" Not above chance by energy: {_join([_name(m) for m in below])}."
    return text


def _finding_classes(s: dict[str, Any]) -> str:
    """The class most methods localise worst, with the best method's per-class pointing game and mask sizes."""
    methods = _distinct(s)
    classes = list(s["scores"][methods[0]].get("by_class", {})) if methods else []
    if len(classes) < 2:
        return ""
    weakest: dict[str, int] = {}
    for m in methods:
        per = {c: _mean(s["scores"][m]["by_class"][c]["pointing_game"]) for c in classes}
        defined = {c: v for c, v in per.items() if v is not None}
        if defined:
            c = min(defined, key=lambda k: defined[k])
            weakest[c] = weakest.get(c, 0) + 1
    if not weakest:
        return ""
    worst = max(weakest, key=lambda c: weakest[c])
    area = {c: _mean(s["chance"]["by_class"][c]["mask_fraction"]) for c in classes}
    best = _ranked(s, "pointing_game", methods)[0]
    per_class = [f"{_name(c)} {_class_pg(s, best, c)}" for c in classes]
    text = (f"<b>By class, {_name(worst)} is the weak spot:</b> the lowest pointing game for {weakest[worst]} of "
            f"{len(methods)} methods{' (identical methods counted once)' if len(methods) < len(s['methods']) else ''}.")
    text += f" {_name(best)} by class: {'; '.join(per_class)}."
    sized = {c: a for c, a in area.items() if a is not None}
    if sized:
        text += f" Mean mask area: {', '.join(f'{_name(c)} {100 * a:.1f}%' for c, a in sized.items())} of the image"
        smallest = min(sized, key=lambda c: sized[c])
        text += ("; the weak class has the smallest tumors, and a small target is hard for a coarse map to hit."
                 if smallest == worst else ".")
    return text


def _class_pg(s: dict[str, Any], method: str, c: str) -> str:
    e = s["scores"][method]["by_class"][c]["pointing_game"]
    return "undefined" if e.get("mean") is None else _with_ci(e)


def _finding_randomisation(s: dict[str, Any]) -> str:
    """Which methods fail the randomisation check (maps that ignore the learnt weights), and the margins."""
    san = s.get("sanity")
    if not san:
        return "The randomisation check was not run (<code>--sanity N</code>): no method is vouched for by it."
    final = {m: _final_spearman(v) for m, v in san["methods"].items()}
    fails = [m for m, v in san["methods"].items() if v["fails"]]
    passes = [m for m in san["methods"] if m not in fails]
    where = f"{san['n_images']} scans, {len(san['layers'])} steps from the output layer down"
    if fails:
        one = len(fails) == 1
        text = (f"<b>{_join([_name(m) for m in fails])} {'fails' if one else 'fail'} the randomisation check</b> "
                f"({where}): with every layer's weights re-drawn, {'its' if one else 'their'} maps still correlate "
                f"{_join([_num(final[m], 2) for m in fails])} (Spearman) with the trained model's, above the 0.5 "
                "fail line. Such maps follow the image more than what the model learnt: do not read them as the "
                "model's reasons.")
        close = [m for m in fails if _margin(final[m]) < NARROW / 2]
        if close:
            text += f" {_join([_name(m) for m in close])}: only just over the line."
    else:
        text = f"<b>Every method passes the randomisation check</b> ({where})."
    if passes:
        text += (f" {'Passing' if fails else 'Final Spearman'}: "
                 + ", ".join(f"{_name(m)} {_num(final[m], 2)}" for m in passes) + ".")
        narrow = [m for m in passes if _margin(final[m]) < NARROW]
        if narrow:
            text += f" {_join([_name(m) for m in narrow])} {'passes' if len(narrow) == 1 else 'pass'} narrowly."
    return text


def _final_spearman(method: dict[str, Any]) -> float | None:
    """Mean Spearman after the last (fullest) randomisation step; None when undefined."""
    steps = method["steps"]
    return None if not steps or steps[-1]["spearman"] is None else float(steps[-1]["spearman"])


def _margin(rho: float | None) -> float:
    """Distance from the 0.5 fail line (infinite when undefined: never called narrow)."""
    return float("inf") if rho is None or not np.isfinite(rho) else abs(rho - 0.5)


def _finding_identical(s: dict[str, Any]) -> str:
    """Pairs of methods that give the same numbers everywhere, and why when it is Grad-CAM++ and Layer-CAM."""
    pairs = coinciding_methods(s)
    if not pairs:
        return ""
    out = []
    for a, b, gap in pairs:
        text = (f"<b>{_name(a)} and {_name(b)} give the same maps for this model</b> (every score, curve and "
                f"randomisation step equal within {within(gap)}): count them as one method.")
        if {a, b} == {"gradcam++", "layercam"}:
            text += (" This is expected when the head is global average pooling and a dense layer: the gradient at "
                     "the CAM layer is then the same at every position, and Grad-CAM++'s weights reduce to "
                     "Layer-CAM's.")
        out.append(text)
    return " ".join(out)


def _finding_faithfulness(s: dict[str, Any]) -> str:
    """Which method each faithfulness score favours, and whether the best localiser is also faithful."""
    faith = s.get("faithfulness")
    if not faith:
        return ""
    methods = [m for m in _distinct(s) if m in faith]
    orders = {}
    for score, higher in FAITH_HIGHER.items():
        have = [m for m in methods if _mean(faith[m]["summary"].get(score)) is not None]
        if len(have) > 1:
            orders[score] = sorted(have, key=lambda m: faith[m]["summary"][score]["mean"], reverse=higher)
    if not orders:
        return ""
    parts = [_faith_part(s, score, order) for score, order in orders.items()]
    text = (f"<b>Faithfulness</b> ({s['settings']['faithfulness_images']} scans; does removing what a map marks "
            "change the prediction?): " + "; ".join(parts) + ".")
    best = _ranked(s, "pointing_game", methods)
    clear = {sc: order for sc, order in orders.items() if not _overlap(s, sc, order)}
    if best and clear:
        loc = best[0]
        lasts = [sc for sc, order in clear.items() if order[-1] == loc]
        if all(order[0] == loc for order in clear.values()):
            text += f" The best localiser, {_name(loc)}, is also first by every score with a clear order."
        elif lasts:
            text += (f" The best localiser, {_name(loc)}, is clearly last by {_join([_name(sc) for sc in lasts])}: "
                     "<b>localising well and being faithful are different things</b>, so report both kinds of score.")
        else:
            text += f" The best localiser, {_name(loc)}, is not the most faithful: report both kinds of score."
    return text


def _overlap(s: dict[str, Any], score: str, order: Sequence[str]) -> bool:
    """Whether the first and last method's CIs of a faithfulness score overlap (no clear order)."""
    first, last = (s["faithfulness"][m]["summary"][score] for m in (order[0], order[-1]))
    return bool(first["low"] <= last["high"] and last["low"] <= first["high"])


def _faith_part(s: dict[str, Any], score: str, order: Sequence[str]) -> str:
    """`deletion AUC (lower is better): A first (0.43), B last (0.52)`, or no clear order when their CIs overlap."""
    first, last = (s["faithfulness"][m]["summary"][score] for m in (order[0], order[-1]))
    if _overlap(s, score, order):
        return (f"{_label(s, score)}: no clear order ({_name(order[0])} {first['mean']:.3f} to {_name(order[-1])} "
                f"{last['mean']:.3f}, CIs overlap)")
    return (f"{_label(s, score)}: {_name(order[0])} first ({first['mean']:.3f}), {_name(order[-1])} last "
            f"({last['mean']:.3f})")


def _finding_shortcuts(s: dict[str, Any]) -> str:
    """Methods that put much of their attribution outside the head, where no tumor can be."""
    share = {m: _mean(s["scores"][m]["all"].get("outside_head_share")) for m in _distinct(s)}
    high = [m for m, v in share.items() if v is not None and v > OUTSIDE_HEAD]
    if not high:
        return ""
    return (f"<b>{_join([_name(m) for m in high])} put{'s' if len(high) == 1 else ''} a large share of "
            f"{'its' if len(high) == 1 else 'their'} attribution outside the head</b> "
            f"({_join([f'{share[m]:.3f}' for m in high])}), where no tumor can be: background noise or edges, "
            "not tumor evidence.")


def _finding_scans(s: dict[str, Any]) -> str:
    """How many scans were unseen in training, and what that does and does not guarantee."""
    sel, n = s["selection"], s["n_images"]
    explained = "annotated (true)" if s["target"] == "true" else "predicted"
    tail = f" The model classifies {100 * s['accuracy']:.1f}% of them correctly; the maps explain the {explained} class."
    if not sel.get("unseen_only", "unseen" in sel) or "unseen" not in sel:
        return (f"<b>{n} scans, not checked against the training data</b> (<code>--all</code>): they may be scans "
                "the model learnt from, or twins of them. Read this audit as where the model looks on scans it has "
                "in effect seen, not as a held-out result." + tail)
    text = (f"<b>{n} scans unseen in training:</b> of {sel['with_mask']:,} scans with a tumor mask, "
            f"{sel['seen']:,} have a twin (a near-copy as it is, mirrored or flipped) among the "
            f"{sel.get('train_rows', 0):,} training scans and were left out, since a model can look right on an "
            "image it has memorised.")
    val = sel.get("unseen_with_val_twin")
    if val:
        text += (f" {'All' if val == sel['unseen'] else val} of the {sel['unseen']} unseen scans have a twin in the "
                 "validation split, which chose the checkpoint: weaker than a held-out test set.")
    return text + tail


# ---------------------------------------------------------------------------------------- run and scans
def _run(s: dict[str, Any]) -> str:
    """The run's settings, model and timings."""
    rows = [("Model", s["model"]), ("Data", s["data"]), ("Scans audited", s["n_images"]),
            ("Model accuracy on them", f"{100 * s['accuracy']:.1f}%"),
            ("Temperature (probabilities)", f"{s.get('temperature', 1.0):.3g}"),
            ("Explained class", "the annotated (true) class" if s["target"] == "true" else "the predicted class"),
            ("Methods", ", ".join(display_name(m) for m in s["methods"])), ("CAM layer", s.get("cam_layer") or "-"),
            ("Masks", ", ".join(f"{k}: {v}" for k, v in s["mask_sources"].items())),
            ("Wall time", f"{s['wall_time_s']:.0f} s (" + ", ".join(
                f"{display_name(k[:-2])} {v:.0f} s" for k, v in s["timings"].items() if k != "total_s") + ")")]
    body = "".join(f"<tr><th>{k}</th><td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in rows)
    if s.get("command"):
        body += f"<tr><th>Command</th><td style='text-align:left'><code>{html.escape(s['command'])}</code></td></tr>"
    return f"<h2>This run</h2><table class='run'>{body}</table>"


def _selection(s: dict[str, Any]) -> str:
    sel = s["selection"]
    counts = (f"{sel['scans']} scans in the dataset, {sel['with_mask']} with a tumor mask of the model's classes"
              + (f"; {sel['unseen']} unseen, {sel['seen']} with a twin (as it is, mirrored or flipped) in training" if "unseen" in sel else "")
              + ("; skipped: " + ", ".join(f"{v} {k}" for k, v in sel["skipped"].items() if isinstance(v, int))
                 if sel.get("skipped") else "")
              + f"; {sel['audited']} audited.")
    return (f"<h2>Which scans</h2><p class='note'>{html.escape(s['unseen_definition'])}</p>"
            f"<p>{html.escape(counts)}</p>")


# ---------------------------------------------------------------------------------------------- tables
def _ci(entry: dict[str, Any] | None, digits: int = 3) -> str:
    """`mean [low, high]` of a summarise() entry, or a dash when undefined."""
    if not entry or entry.get("mean") is None:
        return "&ndash;"
    return f"{entry['mean']:.{digits}f} <span class='muted'>[{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]</span>"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _score_table(s: dict[str, Any], names: Sequence[str]) -> str:
    """Methods x scores over all scans (the best of each column in bold), n (valid scans) per method and the
    chance row (approximate for the pointing game, whose tolerance widens the mask)."""
    best = {n: max((_mean(s["scores"][m]["all"][n]) or -1.0) for m in s["methods"]) for n in names}
    rows = [[_name(m)] + [_bold(_ci(s["scores"][m]["all"][n]), _mean(s["scores"][m]["all"][n]) == best[n])
                          for n in names]
            + [str(max(s["scores"][m]["all"][n]["n_valid"] for n in names))] for m in s["methods"]]
    chance = _ci(s["chance"]["all"]["mask_fraction"])
    exact = {"energy_pointing_game": chance, "relevance_rank_accuracy": chance,
             "pointing_game": f"&asymp; {_mean(s['chance']['all']['mask_fraction']):.3f}"}
    rows.append(["<i>chance (mask area)</i>"] + [exact.get(n, "") for n in names] + [""])
    return _table(["Method"] + [_label(s, n) for n in names] + ["n"], rows)


def _bold(cell: str, on: bool) -> str:
    return f"<b>{cell}</b>" if on else cell


def _localisation(s: dict[str, Any]) -> str:
    return ("<h2>Localisation</h2><p>Higher is better; each score lies in [0, 1]. Each panel's axis spans its "
            "values; dashed: the chance level.</p>"
            + _score_table(s, LOCALISATION_SCORES) + _img(_png(localisation_figure(s, LOCALISATION_SCORES))))


_GROUPS = (("by_class", "Class"), ("by_plane", "Plane"), ("by_prediction", "Prediction"))


def _groups(s: dict[str, Any]) -> str:
    """Pointing game and energy per class, plane and correctness (methods x groups), the full tables folded."""
    out = ["<h2>By class, plane and correctness</h2><p>Pointing game and energy inside the mask per group; the "
           "chance row is the group's mean mask area. All scores per group are in the folded table below each.</p>"]
    first = s["methods"][0]
    for group, title in _GROUPS:
        keys = list(s["scores"][first].get(group, {}))
        if keys:
            out.append(f"<h3>{title}</h3>" + _pivot(s, group, keys) + _full_group(s, group, title, keys))
    return "".join(out)


def _pivot(s: dict[str, Any], group: str, keys: Sequence[str]) -> str:
    """One row per method: pointing game per group, then energy per group (two-level header with each
    group's n); the chance row is each group's mean mask area."""
    first = s["methods"][0]
    n = {k: s["scores"][first][group][k]["energy_pointing_game"]["n"] for k in keys}
    span = len(keys)
    top = (f"<tr><th rowspan='2'>Method</th><th colspan='{span}' class='group'>{_label(s, 'pointing_game')}</th>"
           f"<th colspan='{span}' class='group'>{_label(s, 'energy_pointing_game')}</th></tr>")
    sub = "<tr>" + "".join(f"<th>{_name(k)} <span class='muted'>n = {n[k]}</span></th>" for k in keys) * 2 + "</tr>"
    rows = [[_name(m)] + [_ci(s["scores"][m][group][k]["pointing_game"]) for k in keys]
            + [_ci(s["scores"][m][group][k]["energy_pointing_game"]) for k in keys] for m in s["methods"]]
    rows.append(["<i>chance (mask area)</i>"] + [_ci(s["chance"][group][k]["mask_fraction"]) for k in keys] * 2)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='pivot'><thead>{top}{sub}</thead><tbody>{body}</tbody></table>"


def _full_group(s: dict[str, Any], group: str, title: str, keys: Sequence[str]) -> str:
    """Every localisation score per method and group, folded away."""
    rows = []
    for m in s["methods"]:
        for k in keys:
            e = s["scores"][m][group][k]
            rows.append([_name(m), _name(k)] + [_ci(e[name]) for name in LOCALISATION_SCORES]
                        + [_ci(s["chance"][group][k]["mask_fraction"]), str(e["energy_pointing_game"]["n"])])
    table = _table(["Method", title] + [_label(s, n) for n in LOCALISATION_SCORES]
                   + [_label(s, "mask_fraction") + " (chance)", "n"], rows)
    return f"<details><summary>All scores by {title.lower()}</summary>{table}</details>"


def _shortcuts(s: dict[str, Any]) -> str:
    rows = [[_name(m)] + [_ci(s["scores"][m]["all"][n]) for n in ("outside_head_share", "corner_share")]
            for m in s["methods"]]
    return ("<h2>Shortcut evidence</h2><p>Share of positive attribution where no tumor can be (lower is "
            "better; a uniform map puts 4% in the corners).</p>"
            + _table(["Method", _label(s, "outside_head_share"), _label(s, "corner_share")], rows))


def _faithfulness(s: dict[str, Any]) -> str:
    if not s.get("faithfulness"):
        return ""
    names = ("deletion_auc", "insertion_auc", "road_morf", "road_lerf")
    rows = [[_name(m)] + [_ci(v["summary"][n]) for n in names] + [str(v["summary"][names[0]]["n_valid"])]
            for m, v in s["faithfulness"].items()]
    return (f"<h2>Faithfulness</h2><p>On {s['settings']['faithfulness_images']} scans (seeded random subset): "
            "does removing what the map marks change the prediction?</p>"
            + _table(["Method"] + [_label(s, n) for n in names] + ["n"], rows) + _img(_png(faithfulness_figure(s))))


def _sanity(s: dict[str, Any]) -> str:
    san = s.get("sanity")
    if not san:
        return ""
    rows = []
    for m, v in san["methods"].items():
        last = v["steps"][-1]
        verdict = "<b>fails</b>" if v["fails"] else "passes"
        rows.append([_name(m), _num(last["spearman"]), _num(last["ssim"]), verdict])
    return (f"<h2>Randomisation check</h2><p>{san['n_images']} scans; the network's weights are re-drawn step by "
            "step from the output layer down, and each method's maps compared with the trained model's. A method "
            "that explains the model should drift towards 0. Steps, top down: "
            f"{html.escape(', '.join(layer.rsplit('/', 1)[-1] for layer in san['layers']))}.</p>"
            + _table(["Method", "Spearman after full randomisation", "SSIM", "Verdict"], rows)
            + _img(_png(sanity_figure(s))))


def _num(v: float | None, digits: int = 3) -> str:
    return "&ndash;" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


# --------------------------------------------------------------------------------------------- figures
def _img(png: bytes) -> str:
    return img_tag(png, "figure")


def _png(fig, dpi: int = 130) -> bytes:
    return figure_png(fig, dpi, close=True)


def _gallery(s: dict[str, Any], gallery: dict[str, list[dict[str, Any]]]) -> str:
    if not gallery:
        return ""
    out = ["<h2>Gallery</h2><p>Per method, the scans with the highest energy inside the mask (best), those "
           "around the median (typical: what the method usually does) and those with the lowest (worst). "
           "Heatmap: the same overlay as the explanation figures (magma for non-negative maps, red-blue centred on "
           "zero for signed ones, opacity growing with the value) over the scan as the model saw it; dashed green: "
           "the tumor mask; white +: the map's peak.</p>"]
    for method, items in gallery.items():
        if items:
            out.append(f"<h3>{_name(method)}</h3>" + _img(_png(gallery_figure(method, items), dpi=120))
                       + _gallery_paths(items))
    return "".join(out)


def _gallery_paths(items: Sequence[dict[str, Any]]) -> str:
    """The gallery's scans by row, left to right, folded away."""
    lines = []
    for kind in GALLERY_KINDS:
        paths = [html.escape(str(it["path"])) for it in items if it["kind"] == kind]
        if paths:
            lines.append(f"<b>{kind}</b>: " + ", ".join(paths))
    return f"<details class='muted'><summary>Scan files</summary>{'<br>'.join(lines)}</details>"

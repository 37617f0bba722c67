"""The focus audit's report: one self-contained HTML file (figures embedded as base64 PNG).

:func:`render_report` takes the audit's `summary.json` content and its gallery (best and worst scans per
method) and returns the page: which scans were audited and what "unseen" means, tables of every score
with bootstrap 95% CIs (overall, per class, per plane, by correctness), the chance level, shortcut
shares, faithfulness and sanity results when measured, and the gallery with the mask outlined.
"""
from __future__ import annotations

import html
from typing import Any, Sequence

import numpy as np

from xai_bt.audit.localisation import LOCALISATION_SCORES
from xai_bt.plots.audit import SCORE_LABELS, faithfulness_figure, gallery_figure, localisation_figure, sanity_figure
from xai_bt.plots.style import figure_png
from xai_bt.review.html import img_tag

DEFINITIONS = """
<dl>
<dt>Pointing game</dt><dd>1 if the map's maximum lies in the mask or within {tol} px of it (model
resolution, {size} px), else 0 (Zhang et al. 2018). Undefined for a constant map.</dd>
<dt>Energy pointing game</dt><dd>Share of the map's positive attribution inside the mask (Wang et al. 2020).
A uniform map scores the mask's area fraction: compare with the chance row.</dd>
<dt>Relevance rank accuracy</dt><dd>With K = mask pixels, the fraction of the K highest-ranked pixels inside
the mask (Arras et al. 2022); ties averaged. Chance = mask area fraction.</dd>
<dt>Top-5% IoU</dt><dd>IoU of the 5% highest pixels with the mask: also penalises maps whose hot spot is
much larger or smaller than the tumor.</dd>
<dt>Shortcut shares</dt><dd>Share of positive attribution outside the head (Otsu head mask) and in the four
corner squares (10% of the side): evidence where no tumor can be.</dd>
<dt>Faithfulness</dt><dd>Deletion / insertion AUC of the explained class's probability as the map's top
pixels are blurred away / restored (Petsiuk et al. 2018); ROAD mean probability as {road}% of pixels are
imputed from their neighbours, most-relevant-first (MoRF) or least-relevant-first (LeRF) (Rong et al. 2022).</dd>
<dt>Sanity check</dt><dd>Cascading model-parameter randomisation (Adebayo et al. 2018): Spearman rank
correlation of maps after re-initialising the network from the top down to each block with the trained
model's maps. A method whose maps still correlate above 0.5 after full randomisation fails.</dd>
</dl>
<p>All intervals are 95% percentile-bootstrap intervals over scans (1,000 resamples); n counts the scans a
score is defined on.</p>
"""

CSS = """
body { font-family: -apple-system, 'DejaVu Sans', Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0 1.4em; font-size: 0.88em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #888; }
img { max-width: 100%; }
.note { background: #f4f6f8; border-left: 4px solid #0072B2; padding: 0.6em 1em; }
.muted { color: #777; font-size: 0.85em; }
dt { font-weight: bold; margin-top: 0.4em; }
"""


# ------------------------------------------------------------------------------------------------ page
def render_report(summary: dict[str, Any], gallery: dict[str, list[dict[str, Any]]]) -> str:
    """The whole report as an HTML string."""
    parts = [_header(summary), _selection(summary), _localisation(summary), _groups(summary),
             _shortcuts(summary), _faithfulness(summary), _sanity(summary), _gallery(summary, gallery),
             "<h2>Definitions</h2>" + DEFINITIONS.format(tol=summary["settings"]["tolerance_px"],
                                                         size=summary["input_size"],
                                                         road=", ".join(map(str, summary["settings"]["road_percentages"])))]
    title = f"Focus audit: {html.escape(summary['model_name'])}"
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{CSS}</style></head><body>\n<h1>{title}</h1>\n" + "\n".join(p for p in parts if p)
            + "\n</body></html>\n")


def _header(s: dict[str, Any]) -> str:
    rows = [("Model", s["model"]), ("Data", s["data"]), ("Scans audited", s["n_images"]),
            ("Model accuracy on them", f"{100 * s['accuracy']:.1f}%"),
            ("Temperature (probabilities)", f"{s.get('temperature', 1.0):g}"),
            ("Explained class", "the annotated (true) class" if s["target"] == "true" else "the predicted class"),
            ("Methods", ", ".join(s["methods"])), ("CAM layer", s.get("cam_layer") or "-"),
            ("Masks", ", ".join(f"{k}: {v}" for k, v in s["mask_sources"].items())),
            ("Wall time", f"{s['wall_time_s']:.0f} s (" + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in
                                                               s["timings"].items() if k != "total_s") + ")")]
    if s.get("command"):
        rows.append(("Command", f"<code>{html.escape(s['command'])}</code>"))
    body = "".join(f"<tr><th>{k}</th><td style='text-align:left'>{v if k == 'Command' else html.escape(str(v))}</td></tr>"
                   for k, v in rows)
    return f"<table>{body}</table>"


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
    """Methods x scores over all scans, with n (valid scans) per method and the chance row."""
    rows = [[m] + [_ci(s["scores"][m]["all"][n]) for n in names]
            + [str(max(s["scores"][m]["all"][n]["n_valid"] for n in names))] for m in s["methods"]]
    chance = _ci(s["chance"]["all"]["mask_fraction"])
    rows.append(["<i>chance (mask area)</i>"] + [chance if n in ("energy_pointing_game", "relevance_rank_accuracy")
                                                else "" for n in names] + [""])
    return _table(["Method"] + [SCORE_LABELS[n] for n in names] + ["n"], rows)


def _localisation(s: dict[str, Any]) -> str:
    return ("<h2>Localisation</h2><p>Higher is better; each score lies in [0, 1].</p>"
            + _score_table(s, LOCALISATION_SCORES) + _img(_png(localisation_figure(s, LOCALISATION_SCORES))))


def _groups(s: dict[str, Any]) -> str:
    out = ["<h2>By class, plane and correctness</h2>"]
    first = s["methods"][0]
    for group, title in (("by_class", "Class"), ("by_plane", "Plane"), ("by_prediction", "Prediction")):
        keys = list(s["scores"][first].get(group, {}))
        if not keys:
            continue
        rows = []
        for m in s["methods"]:
            for k in keys:
                e = s["scores"][m][group][k]
                rows.append([m, k, _ci(e["pointing_game"]), _ci(e["energy_pointing_game"]),
                             _ci(e["relevance_rank_accuracy"]), _ci(s["chance"][group][k]["mask_fraction"]),
                             str(e["energy_pointing_game"]["n"])])
        out.append(f"<h3>{title}</h3>" + _table(
            ["Method", title, SCORE_LABELS["pointing_game"], SCORE_LABELS["energy_pointing_game"],
             SCORE_LABELS["relevance_rank_accuracy"], SCORE_LABELS["mask_fraction"], "n"], rows))
    return "".join(out)


def _shortcuts(s: dict[str, Any]) -> str:
    rows = [[m] + [_ci(s["scores"][m]["all"][n]) for n in ("outside_head_share", "corner_share")]
            for m in s["methods"]]
    return ("<h2>Shortcut evidence</h2><p>Share of positive attribution where no tumor can be (lower is "
            "better; a uniform map puts 4% in the corners).</p>"
            + _table(["Method", SCORE_LABELS["outside_head_share"], SCORE_LABELS["corner_share"]], rows))


def _faithfulness(s: dict[str, Any]) -> str:
    if not s.get("faithfulness"):
        return ""
    names = ("deletion_auc", "insertion_auc", "road_morf", "road_lerf")
    rows = [[m] + [_ci(v["summary"][n]) for n in names] for m, v in s["faithfulness"].items()]
    return (f"<h2>Faithfulness</h2><p>On {s['settings']['faithfulness_images']} scans (seeded random subset).</p>"
            + _table(["Method"] + [SCORE_LABELS[n] for n in names], rows) + _img(_png(faithfulness_figure(s))))


def _sanity(s: dict[str, Any]) -> str:
    san = s.get("sanity")
    if not san:
        return ""
    rows = []
    for m, v in san["methods"].items():
        last = v["steps"][-1]
        verdict = "<b>fails</b>" if v["fails"] else "passes"
        rows.append([m, _num(last["spearman"]), _num(last["ssim"]), verdict])
    return (f"<h2>Sanity check (model randomisation)</h2><p>{san['n_images']} scans; cascade steps, top down: "
            f"{html.escape(', '.join(san['layers']))}.</p>"
            + _table(["Method", "Spearman after full randomisation", "SSIM", "Verdict"], rows)
            + _img(_png(sanity_figure(s))))


def _num(v: float | None) -> str:
    return "&ndash;" if v is None or not np.isfinite(v) else f"{v:.3f}"


# --------------------------------------------------------------------------------------------- figures
def _img(png: bytes) -> str:
    return img_tag(png, "figure")


def _png(fig, dpi: int = 130) -> bytes:
    return figure_png(fig, dpi, close=True)


def _gallery(s: dict[str, Any], gallery: dict[str, list[dict[str, Any]]]) -> str:
    if not gallery:
        return ""
    out = ["<h2>Gallery</h2><p>Per method, the scans with the highest and lowest energy pointing game. "
           "Heatmap: the same overlay as the explanation figures (magma for non-negative maps, red-blue centred on "
           "zero for signed ones, opacity growing with the value) over the scan as the model saw it; dashed green: "
           "the tumor mask; white +: the map's peak.</p>"]
    for method, items in gallery.items():
        if items:
            out.append(f"<h3>{html.escape(method)}</h3>" + _img(_png(gallery_figure(method, items), dpi=110))
                       + "<p class='muted'>" + "<br>".join(html.escape(f"{it['kind']}: {it['path']}") for it in items)
                       + "</p>")
    return "".join(out)

"""The focus audit's figures (numbers in, Figure out): localisation scores with CIs, faithfulness curves,
the randomisation check, and each method's best, typical and worst scans drawn with the shared heatmap overlay.

Every method keeps one colour, line style and marker in every figure (:func:`method_style`), so two methods
whose curves coincide stay visible, and such a pair is named in the legend ("identical to ... within x").
Legends sit outside the axes; names are display names (:func:`xai_bt.names.display_name`).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from xai_bt.names import display_name
from xai_bt.plots.heatmap import draw_heatmap
from xai_bt.plots.style import PALETTE, style_context

__all__ = ["SCORE_LABELS", "CHANCE_SCORES", "score_label", "method_style", "identical_curves", "within",
           "localisation_figure", "faithfulness_figure", "sanity_figure", "gallery_figure"]

#: Which way each score is better, said after its name in figures and tables.
_BETTER = {"deletion_auc": "lower", "road_morf": "lower", "outside_head_share": "lower", "corner_share": "lower",
           "insertion_auc": "higher", "road_lerf": "higher"}
#: How each audit score is named in figures and tables (display names; the direction where it matters).
SCORE_LABELS = {name: display_name(name) + (f" ({_BETTER[name]} is better)" if name in _BETTER else "")
                for name in ("pointing_game", "energy_pointing_game", "relevance_rank_accuracy", "topk_iou",
                             "outside_head_share", "corner_share", "deletion_auc", "insertion_auc", "road_morf",
                             "road_lerf", "mask_fraction")}
#: Scores whose chance level is about the mask's area fraction (a uniform map or a randomly placed peak).
CHANCE_SCORES = ("pointing_game", "energy_pointing_game", "relevance_rank_accuracy")
#: Curves closer than this everywhere are drawn as one method twice (and said so).
SAME_CURVE = 0.01

_LINESTYLES: tuple[Any, ...] = ("-", "--", "-.", ":", (0, (5, 1.5, 1, 1.5, 1, 1.5)), (0, (8, 2)))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_GALLERY_ROWS = {"best": "Best: highest energy inside the tumor",
                 "typical": "Typical: around the median energy",
                 "worst": "Worst: lowest energy inside the tumor"}


def score_label(name: str, top_k: float = 0.05) -> str:
    """A score's label with the top-k share the audit used ("top-5% IoU")."""
    return SCORE_LABELS.get(name, display_name(name)).replace("top-k", f"top-{100 * top_k:g}%")


def method_style(index: int) -> dict[str, Any]:
    """Colour, line style and marker of the method at `index` in the audit's method list."""
    return {"color": PALETTE[index % len(PALETTE)], "linestyle": _LINESTYLES[index % len(_LINESTYLES)],
            "marker": _MARKERS[index % len(_MARKERS)]}


def within(gap: float, floor: float = 1e-4) -> str:
    """A difference rounded up to one significant digit ("0.0004"), at least `floor`, so "identical within"
    never understates it and never reads as a string of zeros."""
    gap = max(gap, floor) if math.isfinite(gap) else floor
    digits = -math.floor(math.log10(gap))
    value = math.ceil(gap * 10 ** digits) / 10 ** digits
    return f"{value:.{max(digits, 0)}f}"


def identical_curves(curves: dict[str, Sequence[Sequence[float]]], tolerance: float = SAME_CURVE) -> dict[str, tuple[str, float]]:
    """For each method whose every curve lies within `tolerance` of an earlier method's: (that method, gap)."""
    out: dict[str, tuple[str, float]] = {}
    names = list(curves)
    for j, b in enumerate(names):
        for a in names[:j]:
            if a in out:
                continue
            gaps = [np.nanmax(np.abs(np.asarray(x, float) - np.asarray(y, float)))
                    for x, y in zip(curves[a], curves[b]) if len(x) == len(y) and np.isfinite(x).any()]
            if gaps and len(gaps) == len(curves[b]) and max(gaps) <= tolerance:
                out[b] = (a, float(max(gaps)))
                break
    return out


def _legend_label(method: str, same: dict[str, tuple[str, float]], extra: str = "") -> str:
    """A legend entry: the display name, its numbers, and which earlier method it coincides with."""
    text = display_name(method) + extra
    if method in same:
        other, gap = same[method]
        text += f"\nidentical to {display_name(other)} within {within(gap)}"
    return text


# ------------------------------------------------------------------------------------------ localisation
def localisation_figure(s: dict[str, Any], names: Sequence[str]) -> Figure:
    """Point and 95% CI per method for each localisation score, each panel's x range fit to its values and
    CIs, the chance level (mean mask area) dashed where it applies."""
    methods = s["methods"]
    chance = s["chance"]["all"]["mask_fraction"]["mean"]
    top_k = s.get("settings", {}).get("top_k", 0.05)
    with style_context():
        fig = Figure(figsize=(9, 0.32 * len(methods) + 1.5), layout="constrained")
        axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
        for ax, name in zip(axes, names):
            marked = chance if name in CHANCE_SCORES else None
            _forest(ax, [s["scores"][m]["all"][name] for m in methods], marked)
            ax.set_title(score_label(name, top_k))
        axes[0].set_yticks(range(len(methods)), [display_name(m) for m in methods])
        axes[0].set_ylim(len(methods) - 0.5, -0.5)
        if chance is not None:
            fig.legend([Line2D([], [], ls="--", color="0.45", lw=0.9)],
                       [f"chance: mean tumor mask area ({chance:.3f} of the image)"], loc="outside lower center")
    return fig


def _forest(ax, entries: Sequence[dict[str, Any]], chance: float | None) -> None:
    """One forest panel: each entry's mean with its CI, x limits around the data (and chance)."""
    values: list[float] = [] if chance is None else [chance]
    for row, e in enumerate(entries):
        if e.get("mean") is None:
            continue
        style = method_style(row)
        ax.errorbar(e["mean"], row, xerr=[[e["mean"] - e["low"]], [e["high"] - e["mean"]]], fmt=style["marker"],
                    color=style["color"], ms=4, capsize=2, lw=1)
        values += [e["low"], e["high"]]
    if chance is not None:
        ax.axvline(chance, ls="--", color="0.45", lw=0.9)
    if values:
        lo, hi = min(values), max(values)
        pad = 0.08 * (hi - lo or 0.1)
        ax.set_xlim(max(0.0, lo - pad), min(1.0, hi + pad) if hi <= 1 else hi + pad)
    ax.grid(axis="x", color="0.92", lw=0.6)
    ax.set_axisbelow(True)


# ------------------------------------------------------------------------------------------ faithfulness
def faithfulness_figure(s: dict[str, Any]) -> Figure:
    """Mean deletion and insertion curves per method, each method in its own line style and marker; the
    legend (with each method's AUCs) beside the axes."""
    faith = s["faithfulness"]
    index = {m: i for i, m in enumerate(s["methods"])}
    same = identical_curves({m: (v["curves"]["deletion"], v["curves"]["insertion"]) for m, v in faith.items()})
    with style_context():
        fig = Figure(figsize=(9, 2.9), layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        for m, v in faith.items():
            style = method_style(index.get(m, len(index)))
            auc = v["summary"]
            extra = (f"  ({auc['deletion_auc']['mean']:.2f} / {auc['insertion_auc']['mean']:.2f})"
                     if auc.get("deletion_auc", {}).get("mean") is not None else "")
            for ax, curve in zip(axes, ("deletion", "insertion")):
                ax.plot(v["curves"]["fraction"], v["curves"][curve], markevery=4, ms=4, lw=1.2,
                        mfc="white" if m in same else style["color"], **style,
                        label=_legend_label(m, same, extra) if curve == "deletion" else None)
        for ax, curve in zip(axes, ("deletion", "insertion")):
            better = "lower" if curve == "deletion" else "higher"
            ax.set_title(f"{curve.capitalize()}: area under the curve, {better} is better")
            ax.set_xlabel(f"fraction of the map's top pixels {'removed' if curve == 'deletion' else 'restored'}")
            ax.grid(color="0.93", lw=0.6)
        axes[0].set_ylabel("probability of the explained class\n(mean over scans)")
        fig.legend(loc="outside right upper", title="method (deletion / insertion AUC)", title_fontsize=7)
    return fig


# ----------------------------------------------------------------------------------------- randomisation
def sanity_figure(s: dict[str, Any]) -> Figure:
    """Mean Spearman correlation with the trained model's maps after each randomisation step, the 0.5 fail
    line dashed; the legend (with each verdict) beside the axes."""
    san = s["sanity"]
    index = {m: i for i, m in enumerate(s["methods"])}
    rhos = {m: [np.nan if st["spearman"] is None else st["spearman"] for st in v["steps"]]
            for m, v in san["methods"].items()}
    same = identical_curves({m: (r,) for m, r in rhos.items()})
    with style_context():
        fig = Figure(figsize=(9, 3.3), layout="constrained")
        ax = fig.subplots()
        for m, rho in rhos.items():
            style = method_style(index.get(m, len(index)))
            verdict = "fails" if san["methods"][m]["fails"] else "passes"
            ax.plot(range(len(rho)), rho, ms=4, lw=1.2, mfc="white" if m in same else style["color"], **style,
                    label=_legend_label(m, same, f" ({verdict})"))
        ax.axhline(0.5, ls="--", color="0.45", lw=0.9, label="fail line: still above 0.5 at the end")
        ax.axhline(0, color="0.8", lw=0.6)
        ax.set_xticks(range(len(san["layers"])), [layer.rsplit("/", 1)[-1] for layer in san["layers"]],
                      rotation=45, ha="right")
        ax.set_ylabel("Spearman correlation with\nthe trained model's maps")
        ax.set_xlabel("weights re-drawn from the output down to (cumulative)")
        ax.grid(axis="y", color="0.93", lw=0.6)
        fig.legend(loc="outside right upper")
    return fig


# --------------------------------------------------------------------------------------------- gallery
def gallery_figure(method: str, items: Sequence[dict[str, Any]]) -> Figure:
    """One method's best, typical (around the median) and worst scans by energy pointing game, one row each
    (a row only for the kinds `items` holds)."""
    kinds = [k for k in _GALLERY_ROWS if any(it["kind"] == k for it in items)]
    rows = [[it for it in items if it["kind"] == kind] for kind in kinds]
    cols = max([1] + [len(r) for r in rows])
    with style_context():
        fig = Figure(figsize=(max(1.9 * cols, 6.0), 0.5 + 2.25 * max(1, len(rows))), layout="constrained")
        subs = fig.subfigures(max(1, len(rows)), 1, squeeze=False)[:, 0]
        for sub, kind, row in zip(subs, kinds, rows):
            sub.suptitle(_GALLERY_ROWS[kind], fontsize=8, fontweight="bold", x=0.01, ha="left")
            axes = sub.subplots(1, cols, squeeze=False)[0]
            for c, ax in enumerate(axes):
                if c >= len(row):
                    ax.set_axis_off()
                    continue
                _tile(ax, row[c])
        fig.suptitle(f"{display_name(method)}: scans by energy inside the tumor mask\n"
                     "dashed green: tumor mask; white +: the map's peak")
    return fig


def _tile(ax, it: dict[str, Any]) -> None:
    """One gallery scan: the overlay and a caption (class, plane, energy and peak in the mask, prediction)."""
    draw_heatmap(ax, it["image"], it["map"], top_k=None, mask=it["mask"], mark_peak=True)
    plane = f", {it['plane']}" if it.get("plane") else ""
    ax.set_title(f"{display_name(it['label'])}{plane}\n"
                 f"in mask: energy {it['energy_pointing_game']:.2f}, peak {_hit(it['pointing_game'])}\n"
                 f"predicted {display_name(it['prediction'])} ({it['confidence']:.2f})", fontsize=6.5)


def _hit(v: float) -> str:
    return "-" if not np.isfinite(v) else ("yes" if v >= 0.5 else "no")

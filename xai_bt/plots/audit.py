"""The focus audit's figures (numbers in, Figure out): localisation scores with CIs, faithfulness curves,
the randomisation check, and each method's best and worst scans drawn with the shared heatmap overlay."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from xai_bt.attribution.registry import label as method_label
from xai_bt.plots.heatmap import draw_heatmap
from xai_bt.plots.style import PALETTE, style_context

__all__ = ["SCORE_LABELS", "localisation_figure", "faithfulness_figure", "sanity_figure", "gallery_figure"]

#: How each audit score is named in figures and tables.
SCORE_LABELS = {
    "pointing_game": "Pointing game", "energy_pointing_game": "Energy pointing game",
    "relevance_rank_accuracy": "Relevance rank accuracy", "topk_iou": "Top-5% IoU",
    "outside_head_share": "Share outside the head", "corner_share": "Share in the corners",
    "deletion_auc": "Deletion AUC (lower better)", "insertion_auc": "Insertion AUC (higher better)",
    "road_morf": "ROAD MoRF (lower better)", "road_lerf": "ROAD LeRF (higher better)",
    "mask_fraction": "Mask area (chance level)",
}


def localisation_figure(s: dict[str, Any], names: Sequence[str]) -> Figure:
    """Point and 95% CI per method for each localisation score; the chance level as a dashed line."""
    methods = s["methods"]
    chance = s["chance"]["all"]["mask_fraction"]["mean"]
    with style_context():
        fig = Figure(figsize=(9, 0.35 * len(methods) + 1.2))
        axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
        for ax, name in zip(axes, names):
            for row, m in enumerate(methods):
                e = s["scores"][m]["all"][name]
                if e["mean"] is None:
                    continue
                ax.errorbar(e["mean"], row, xerr=[[e["mean"] - e["low"]], [e["high"] - e["mean"]]], fmt="o",
                            color=PALETTE[row % len(PALETTE)], ms=4, capsize=2)
            if name in ("energy_pointing_game", "relevance_rank_accuracy") and chance is not None:
                ax.axvline(chance, ls="--", color="0.5", lw=0.8)
            ax.set_xlim(0, 1)
            ax.set_title(SCORE_LABELS[name])
        axes[0].set_yticks(range(len(methods)), methods)
        axes[0].invert_yaxis()
    return fig

def faithfulness_figure(s: dict[str, Any]) -> Figure:
    """Mean deletion and insertion curves per method."""
    with style_context():
        fig = Figure(figsize=(7.2, 2.6))
        axes = fig.subplots(1, 2, sharey=True)
        for i, (m, v) in enumerate(s["faithfulness"].items()):
            for ax, curve in zip(axes, ("deletion", "insertion")):
                ax.plot(v["curves"]["fraction"], v["curves"][curve], label=m, color=PALETTE[i % len(PALETTE)])
        for ax, curve in zip(axes, ("deletion", "insertion")):
            ax.set_title(f"{curve.capitalize()} (mean over scans)")
            ax.set_xlabel(f"fraction of pixels {'removed' if curve == 'deletion' else 'restored'}")
        axes[0].set_ylabel("probability of explained class")
        axes[1].legend(loc="lower right")
    return fig

def sanity_figure(s: dict[str, Any]) -> Figure:
    """Mean Spearman correlation with the trained model's maps after each randomisation step."""
    san = s["sanity"]
    with style_context():
        fig = Figure(figsize=(7.2, 2.8))
        ax = fig.subplots()
        for i, (m, v) in enumerate(san["methods"].items()):
            rho = [np.nan if st["spearman"] is None else st["spearman"] for st in v["steps"]]
            ax.plot(range(len(rho)), rho, marker="o", ms=3, label=m, color=PALETTE[i % len(PALETTE)])
        ax.axhline(0.5, ls="--", color="0.5", lw=0.8)
        ax.set_xticks(range(len(san["layers"])), san["layers"], rotation=45, ha="right")
        ax.set_ylabel("Spearman vs trained maps")
        ax.set_xlabel("randomised from the top down to")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig

def gallery_figure(method: str, items: Sequence[dict[str, Any]]) -> Figure:
    """One method's best (top row) and worst (bottom row) scans by energy pointing game."""
    rows = [[it for it in items if it["kind"] == kind] for kind in ("best", "worst")]
    cols = max(1, max(len(r) for r in rows))
    with style_context():
        fig = Figure(figsize=(max(1.9 * cols, 6.0), 4.6))
        axes = fig.subplots(2, cols, squeeze=False)
        for r, (kind, row) in enumerate(zip(("best", "worst"), rows)):
            for c in range(cols):
                ax = axes[r, c]
                if c >= len(row):
                    ax.set_axis_off()
                    continue
                it = row[c]
                draw_heatmap(ax, it["image"], it["map"], top_k=None, mask=it["mask"], mark_peak=True)
                ax.set_title(f"{kind}: {it['label']} ({it.get('plane') or ''})\n"
                             f"energy {it['energy_pointing_game']:.2f}, hit {_hit(it['pointing_game'])}\n"
                             f"pred {it['prediction']} {it['confidence']:.2f}", fontsize=6.5)
        fig.suptitle(f"{method_label(method)}: best and worst scans by energy pointing game\n"
                     "dashed green: tumor mask; white +: the map's peak")
    return fig


def _hit(v: float) -> str:
    return "-" if not np.isfinite(v) else ("yes" if v >= 0.5 else "no")

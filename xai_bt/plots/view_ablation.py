"""View-vector ablation figure: numbers in, Figure out.

Draws the summaries :func:`xai_bt.evaluation.view_ablation.view_ablation` computed (``by_class``,
``by_plane``); nothing is predicted or averaged here, so the figure shows exactly the tabulated numbers.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from xai_bt.names import display_names
from xai_bt.plots.style import DIVERGING_CMAP, TWO_COLUMN, styled


@styled
def plot_view_ablation(result: Mapping[str, Any]) -> Figure:
    """Two matrices (conditions x classes, conditions x planes) of a view-ablation ``result``. Each cell:
    accuracy (agreement with the intact prediction when there are no labels) and, below it, the change of
    mean confidence; the colour is the change of the first number against "intact" (labelled colour bar)."""
    metric = "accuracy" if result["class_source"] == "labelled" else "agreement"
    changes = [r[f"{metric}_change"] for key in ("by_class", "by_plane") for r in result[key]]
    limit = max(0.1, float(np.max(np.abs(changes))))
    fig = Figure(figsize=(TWO_COLUMN[0], 0.4 * len(result["conditions"]) + 1.4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "by_class", f"class ({result['class_source']})"),
                           (axes[1], "by_plane", f"plane ({result['plane_source']})")):
        image = _draw_matrix(ax, result[key], list(result["conditions"]), metric, limit)
        ax.set_xlabel(label)
    bar = fig.colorbar(image, ax=axes, shrink=0.9, aspect=25)
    bar.set_label(f"change in {metric} vs intact")
    fig.suptitle(f"View-vector ablation of the tumor classifier: {metric} "
                 "(below: change in mean confidence vs intact)")
    return fig


def _draw_matrix(ax: Axes, table: Sequence[Mapping[str, Any]], conditions: list[str], metric: str,
                 limit: float) -> AxesImage:
    """Annotated condition x group matrix of ``metric``, coloured by its change against "intact"."""
    groups = list(dict.fromkeys(r["group"] for r in table))
    row = {(r["condition"], r["group"]): r for r in table}
    values = np.array([[row[c, g][metric] for g in groups] for c in conditions], dtype=float)
    change = np.array([[row[c, g][f"{metric}_change"] for g in groups] for c in conditions], dtype=float)
    image = ax.imshow(change, cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        dc = row[conditions[i], groups[j]]["confidence_change"]
        ax.text(j, i, f"{v:.2f}\n({dc:+.2f})", ha="center", va="center", fontsize=6.5, linespacing=1.1,
                color="white" if abs(change[i, j]) > 0.6 * limit else "black")
    ax.set_xticks(range(len(groups)), display_names(groups), rotation=30, ha="right")
    ax.set_yticks(range(len(conditions)), display_names(conditions))
    ax.tick_params(length=0)
    for side in ("left", "bottom"):
        ax.spines[side].set_visible(False)
    return image

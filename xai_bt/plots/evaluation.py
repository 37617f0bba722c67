"""Evaluation figures. Drawing only: numbers in, Figure out. Every number comes already computed from
:mod:`xai_bt.evaluation.metrics` or :mod:`xai_bt.evaluation.calibration` (as scikit-learn's
``RocCurveDisplay(fpr=..., tpr=...)`` takes what ``roc_curve`` computed), so one computation can feed a
figure, a table and a results file. With only labels and probabilities, compute then draw:

=========================================================  =====================================================
numbers (``xai_bt.evaluation``)                            figure (this module)
=========================================================  =====================================================
``metrics.roc_plot_data(y, p, names)``                     ``plot_roc(**data)``
``metrics.pr_curves``, ``average_precision_with_ci``       ``plot_pr(curves, ap_ci)``
``metrics.classification_report_dict(y, p, names)``        ``plot_confusion(report["confusion_matrix"], names)``
``with_bin_intervals(reliability_bins(y, p, n_bins, c))``  ``plot_reliability(bins, names)``
``metrics.reliability_panels(y, p, n_bins)``               ``plot_reliability_grid(panels, names)``
``{label: calibration.reliability_bins(y, p_i)}``          ``plot_reliability_comparison(bins_by_label, names)``
=========================================================  =====================================================

Every function draws in the project style (titles passed as ``title=`` are drawn in it too), onto ``ax``
if given or a new figure (one column; ROC and PR with their magnified corner two columns, legends below
the panels, over no data), class names as people read them (:func:`xai_bt.names.display_name`), and
returns the Figure; save it with :func:`xai_bt.plots.style.save_figure`. No pyplot: figures are plain ``Figure``
objects, safe headless and in loops (Jupyter still displays a returned Figure).
"""
from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from xai_bt.names import display_name
from xai_bt.plots.style import (
    MATRIX_CMAP,
    OKABE_ITO,
    ONE_COLUMN,
    PALETTE,
    TWO_COLUMN,
    class_color,
    styled,
)

_LR_KEYS = ("lr", "learning_rate")


def _figure_axes(ax: Axes | None, figsize: tuple[float, float] = ONE_COLUMN) -> tuple[Figure, Axes]:
    """The given axes and its figure, or a new single-axes figure."""
    if ax is not None:
        return _root(ax), ax
    fig = Figure(figsize=figsize)
    return fig, fig.add_subplot()


def _root(ax: Axes) -> Figure:
    """The figure that holds ``ax`` (plotting onto an axes outside any figure is a caller's error)."""
    fig = ax.get_figure(root=True)
    if not isinstance(fig, Figure):
        raise ValueError("the axes belong to no figure")
    return fig


def _as_float_array(values: Sequence[float | None]) -> np.ndarray:
    """None (an undefined value in our JSON-safe dicts) becomes NaN."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _num(x: float) -> str:
    """Three decimals, four from 0.99 up (AUC and AP of a good model would all print 1.000)."""
    return f"{x:.4f}" if x >= 0.99 else f"{x:.3f}"


def _ci_text(ci: Mapping[str, Any]) -> str:
    """"0.912 [0.893, 0.930]"; four decimals from 0.99 up, where three would print 1.000 for all."""
    if ci.get("estimate") is None:
        return "n/a"
    d = 4 if ci["estimate"] >= 0.99 else 3
    if ci.get("low") is None or ci.get("high") is None:
        return f"{ci['estimate']:.{d}f}"
    return f"{ci['estimate']:.{d}f} [{ci['low']:.{d}f}, {ci['high']:.{d}f}]"


# --------------------------------------------------------------------------------------------- ROC / PR
def _small() -> float:
    """The style's smallest text size (ticks, legends; 7 pt): numbers printed inside a plot use it too."""
    return float(mpl.rcParams["legend.fontsize"])


def _class_label(name: str, curve: Mapping[str, Any], value: str) -> str:
    """Legend entry of one class: "no tumor (n = 30)  0.998 [0.991, 1.000]" (n where the curve has it)."""
    n = curve.get("n_positive")
    return f"{display_name(name)}{f' (n = {n})' if n is not None else ''}  {value}"


def _auto_zoom(values: Sequence[float | None], ladder: Sequence[tuple[float, float]]) -> float | None:
    """Zoom window for the worst of ``values`` (AUC or AP): the first ``(above, window)`` of ``ladder``
    the worst value exceeds, None when none (the full view then shows everything)."""
    if not values or any(v is None for v in values):
        return None
    worst = min(v for v in values if v is not None)
    return next((window for above, window in ladder if worst > above), None)


#: Widths a data-chosen zoom window snaps to.
_WINDOWS = (0.025, 0.05, 0.1, 0.25, 0.5)


def _roc_window(curves: Mapping[str, Any], tpr_extent: float) -> tuple[float, float]:
    """(FPR extent, TPR extent) of the ROC zoom: wide enough in FPR (one of ``_WINDOWS``, 25% spare) for every
    class to have climbed within a tenth of the window of TPR = 1, so the worst class's rise is in view."""
    target = 1 - tpr_extent / 10
    reach = max((float(np.asarray(c["fpr"])[np.argmax(np.asarray(c["tpr"]) >= target)])
                 for c in curves["per_class"].values()), default=0.0)
    fpr_extent = next((w for w in _WINDOWS if w >= 1.25 * reach), 1.0)
    return min(fpr_extent, tpr_extent), tpr_extent


def _window(zoom: float | Sequence[float] | None) -> tuple[float, float] | None:
    """A zoom given as one width (a square window) or as (x extent, y extent)."""
    if zoom is None or zoom is False:
        return None
    if isinstance(zoom, (int, float)):
        return (float(zoom), float(zoom)) if zoom else None
    x, y = zoom
    return float(x), float(y)


def _curve_axes(ax: Axes | None, zoom_ax: Axes | None, zoom: Any) -> tuple[Figure, Axes, Axes | None, bool]:
    """Axes for a curve figure: the caller's (a zoom panel only if they give one), or a new figure with the
    full view and, if ``zoom``, a magnified panel beside it, both leaving room below for the legend."""
    if ax is not None:
        return _root(ax), ax, zoom_ax if zoom else None, False
    if not zoom:
        fig = Figure(figsize=(ONE_COLUMN[0], 3.9))
        return fig, fig.add_subplot(), None, True
    fig = Figure(figsize=(TWO_COLUMN[0], 3.7))
    full, magnified = fig.subplots(1, 2)
    return fig, full, magnified, True


def _curve_legend(fig: Figure, ax: Axes, own: bool, two_panels: bool, title: str, loc: Any) -> None:
    """The legend below the panels (a figure of our own: it then covers no curve, no chance line), or
    inside the caller's axes at ``loc``."""
    if own:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2 if two_panels else 1,
                   title=title, title_fontsize=_small())
    else:
        ax.legend(loc=loc, title=title, title_fontsize=_small())


def _titles(fig: Figure, ax: Axes, zoom_ax: Axes | None, own: bool, title: str | None, default: str,
            zoom_title: str) -> None:
    """One title for a single panel; with a zoom panel, the figure title above both and a title each."""
    if zoom_ax is None or not own:
        ax.set_title(title or default)
        if zoom_ax is not None:
            zoom_ax.set_title(zoom_title)
        return
    fig.suptitle(title or default)
    ax.set_title("Full range")
    zoom_ax.set_title(zoom_title)


#: Margin beyond 1 (and before 0) on the magnified panels, as a share of the window: curves at TPR = 1 or
#: precision = 1 run clear of the frame instead of hiding in it.
_HEADROOM = 0.04


def _zoom_frame(ax: Axes, zoom_ax: Axes, bounds: tuple[float, float, float, float]) -> None:
    """Frame the magnified panel in grey and mark the window it shows on the full view."""
    zoom_ax.locator_params(nbins=5)
    zoom_ax.spines[:].set_visible(True)
    zoom_ax.spines[:].set_color("0.45")
    ax.indicate_inset(bounds, edgecolor="0.45", lw=0.8, alpha=1.0)


def _stacked_widths(n: int) -> list[float]:
    """Line widths for ``n`` curves drawn in turn, widest first: where curves coincide (several classes at
    TPR = 1 or precision = 1) each colour still shows as an edge of the one drawn over it."""
    return [1.0 + 0.8 * (n - 1 - i) / max(n - 1, 1) for i in range(n)]


def _draw_roc(ax: Axes, curves: Mapping[str, Any], bands: Mapping[str, Any] | None,
              labels: Mapping[str, str] | None) -> None:
    """Per-class ROC curves (with their bands) and the macro average onto ``ax``; labelled if ``labels``."""
    widths = _stacked_widths(len(curves["per_class"]))
    for i, (name, curve) in enumerate(curves["per_class"].items()):
        color = class_color(name, i)
        if bands is not None and name in bands["per_class"]:
            b = bands["per_class"][name]
            ax.fill_between(bands["fpr"], _as_float_array(b["low"]), _as_float_array(b["high"]), step="post",
                            color=color, alpha=0.18, lw=0)
        ax.plot(curve["fpr"], curve["tpr"], color=color, lw=widths[i], label=labels[name] if labels else None)
    ax.plot(curves["macro"]["fpr"], curves["macro"]["tpr"], color=OKABE_ITO["black"], ls="--", lw=1.0,
            label=labels["macro"] if labels else None)


@styled
def plot_roc(
    curves: Mapping[str, Any],
    auc_ci: Mapping[str, Any] | None = None,
    bands: Mapping[str, Any] | None = None,
    ax: Axes | None = None,
    zoom: float | tuple[float, float] | None | str = "auto",
    title: str | None = None,
    zoom_ax: Axes | None = None,
) -> Figure:
    """One-vs-rest ROC curve per class plus the macro average (``curves`` from
    :func:`xai_bt.evaluation.metrics.roc_curves`); the legend gives each class's n and AUC, with its 95% CI
    where ``auc_ci`` (:func:`~xai_bt.evaluation.metrics.auc_with_ci`) is given. ``bands``
    (:func:`~xai_bt.evaluation.metrics.roc_bands`) shades each class's pointwise 95% band of the true
    positive rate. ``zoom`` adds a panel of its own beside the full view magnifying the top-left corner, FPR
    in [0, zoom] and TPR in [1 - zoom, 1] (or FPR in [0, x], TPR in [1 - y, 1] for ``(x, y)``; marked on the
    full view). "auto" does so when every class's AUC is above 0.9 (the curves then hug the corner): TPR
    from 0.9 where the worst AUC is above 0.995, else from 0.75; FPR as far as every class needs to climb
    to near 1 (:func:`_roc_window`). None never. On the caller's ``ax`` the zoom goes to ``zoom_ax`` if
    given. The legend sits below the panels. From predictions:
    ``plot_roc(**roc_plot_data(y, p, names))``."""
    aucs = [c["auc"] for c in curves["per_class"].values()]
    if zoom == "auto":
        height = _auto_zoom(aucs, ((0.995, 0.1), (0.9, 0.25)))
        window = _roc_window(curves, height) if height else None
    else:
        window = _window(zoom)  # type: ignore[arg-type]
    fig, ax, zoom_ax, own = _curve_axes(ax, zoom_ax, window)
    labels = {name: _class_label(name, curve, _ci_text(auc_ci["per_class"][name]) if auc_ci else _num(curve["auc"]))
              for name, curve in curves["per_class"].items()}
    labels["macro"] = f"macro average  {_ci_text(auc_ci['macro']) if auc_ci else _num(float(np.mean(aucs)))}"
    _draw_roc(ax, curves, bands, labels)
    ax.plot([0, 1], [0, 1], ls=":", lw=0.8, color="0.5", label="chance (AUC 0.5)")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="False positive rate (1 − specificity)",
           ylabel="True positive rate (sensitivity)")
    if zoom_ax is not None and window:
        wx, wy = window
        _draw_roc(zoom_ax, curves, bands, None)
        zoom_ax.set(xlim=(-wx * _HEADROOM, wx), ylim=(1 - wy, 1.0 + wy * _HEADROOM), xlabel="False positive rate")
        _zoom_frame(ax, zoom_ax, (0, 1 - wy, wx, wy))
    wx, wy = window or (0.0, 0.0)
    _titles(fig, ax, zoom_ax, own, title, "ROC, one-vs-rest", f"Top-left corner (FPR ≤ {wx:g}, TPR ≥ {1 - wy:g})")
    _curve_legend(fig, ax, own, zoom_ax is not None, "AUC [95% CI]" if auc_ci else "AUC", "lower right")
    return fig


def _draw_pr(ax: Axes, curves: Mapping[str, Any], labels: Mapping[str, str] | None) -> None:
    """Per-class precision-recall steps and the macro average onto ``ax``; labelled if ``labels``."""
    widths = _stacked_widths(len(curves["per_class"]))
    for i, (name, curve) in enumerate(curves["per_class"].items()):
        ax.plot(curve["recall"], curve["precision"], drawstyle="steps-post", color=class_color(name, i),
                lw=widths[i], label=labels[name] if labels else None)
    macro = curves.get("macro", {})
    if "recall" in macro:
        ax.plot(macro["recall"], macro["precision"], drawstyle="steps-post", color=OKABE_ITO["black"], ls="--",
                lw=1.0, label=labels["macro"] if labels else None)


@styled
def plot_pr(
    curves: Mapping[str, Any],
    ap_ci: Mapping[str, Any] | None = None,
    ax: Axes | None = None,
    zoom: float | tuple[float, float] | None | str = "auto",
    title: str | None = None,
    zoom_ax: Axes | None = None,
) -> Figure:
    """One-vs-rest precision-recall curve per class plus the macro average (``curves`` from
    :func:`xai_bt.evaluation.metrics.pr_curves`), each class's chance level (its prevalence) as a dotted
    line in its colour; the legend gives each class's n and average precision, with its 95% bootstrap CI
    where ``ap_ci`` (:func:`~xai_bt.evaluation.metrics.average_precision_with_ci`) is given. ``zoom`` adds a
    panel magnifying the top-right corner, recall and precision in [1 - zoom, 1] (or recall in [1 - x, 1],
    precision in [1 - y, 1] for ``(x, y)``); "auto" picks 0.1, 0.25 or
    0.5 from the worst AP (above 0.995, 0.95, 0.75), None never. Layout as :func:`plot_roc`."""
    aps = [c["average_precision"] for c in curves["per_class"].values()]
    if zoom == "auto":
        zoom = _auto_zoom(aps, ((0.995, 0.1), (0.95, 0.25), (0.75, 0.5)))
    window = _window(zoom)  # type: ignore[arg-type]
    fig, ax, zoom_ax, own = _curve_axes(ax, zoom_ax, window)
    labels = {name: _class_label(name, curve, _ci_text(ap_ci["per_class"][name]) if ap_ci
                                 else _num(curve["average_precision"]))
              for name, curve in curves["per_class"].items()}
    macro = curves.get("macro", {})
    if "recall" in macro:
        value = _ci_text(ap_ci["macro"]) if ap_ci else _num(macro["average_precision"])
        labels["macro"] = f"macro average  {value}"
    _draw_pr(ax, curves, labels)
    for i, (name, curve) in enumerate(curves["per_class"].items()):
        if curve.get("prevalence") is not None:
            ax.axhline(curve["prevalence"], ls=":", lw=0.9, color=class_color(name, i))
    if any(c.get("prevalence") is not None for c in curves["per_class"].values()):
        ax.plot([], [], ls=":", lw=0.9, color="0.4", label="chance (class prevalence)")
    ax.set(xlim=(-0.02, 1.02), ylim=(0.0, 1.03), xlabel="Recall (sensitivity)", ylabel="Precision")
    if zoom_ax is not None and window:
        wx, wy = window
        _draw_pr(zoom_ax, curves, None)
        zoom_ax.set(xlim=(1 - wx, 1.0 + wx * _HEADROOM), ylim=(1 - wy, 1.0 + wy * _HEADROOM), xlabel="Recall")
        _zoom_frame(ax, zoom_ax, (1 - wx, 1 - wy, wx, wy))
    wx, wy = window or (0.0, 0.0)
    corner = (f"recall, precision ≥ {1 - wx:g}" if wx == wy else f"recall ≥ {1 - wx:g}, precision ≥ {1 - wy:g}")
    _titles(fig, ax, zoom_ax, own, title, "Precision-recall, one-vs-rest", f"Top-right corner ({corner})")
    _curve_legend(fig, ax, own, zoom_ax is not None, "AP [95% CI]" if ap_ci else "Average precision (AP)",
                  "lower left")
    return fig


# --------------------------------------------------------------------------------------------- confusion
#: Code names of the class whose prediction for a tumor is a missed tumor.
NO_TUMOR_NAMES = ("no_tumor", "notumor")


def percent_label(count: int, total: int) -> str:
    """A row share as a whole percent, except where rounding would hide an error or a success: "<1%" for
    a share that rounds to 0% but is not 0, ">99%" for one that rounds to 100% but is not all."""
    if total <= 0:
        return "–"
    text = f"{count / total:.0%}"
    if text == "0%" and count > 0:
        return "<1%"
    if text == "100%" and count < total:
        return ">99%"
    return text


def _missed_tumor_cells(class_names: Sequence[str]) -> list[tuple[int, int]]:
    """(row, column) of every tumor called "no tumor": the clinically worst error."""
    no = [j for j, name in enumerate(class_names) if name in NO_TUMOR_NAMES]
    return [(i, no[0]) for i in range(len(class_names)) if no and i != no[0]]


@styled
def plot_confusion(
    cm: Any,
    class_names: Sequence[str],
    normalise: bool = True,
    ax: Axes | None = None,
    cmap: str = MATRIX_CMAP,
    title: str | None = None,
) -> Figure:
    """Confusion matrix ``cm`` of counts (rows true, columns predicted), e.g. a
    :func:`~xai_bt.evaluation.metrics.classification_report_dict`'s ``confusion_matrix``. ``normalise``
    colours by row share (recall on the diagonal) and prints share (:func:`percent_label`: a single error
    never reads 0%) and count; otherwise counts. Rows carry their n; tumors called "no tumor" (missed
    tumors) are outlined in vermillion, and a legend below says so and how many there are."""
    fig, ax = _figure_axes(ax, (ONE_COLUMN[0], 3.3))
    counts = np.asarray(cm)
    totals = counts.sum(axis=1)
    shares = counts / np.maximum(totals[:, None], 1)
    shown = shares if normalise else counts
    image = ax.imshow(shown, cmap=cmap, vmin=0, vmax=1 if normalise else None)
    integer = np.issubdtype(counts.dtype, np.integer)
    for (i, j), value in np.ndenumerate(shown):
        if normalise:
            text = percent_label(int(counts[i, j]), int(totals[i])) if integer else f"{shares[i, j]:.0%}"
            text += f"\n({counts[i, j]})" if integer else ""
        else:
            text = f"{counts[i, j]}" if integer else f"{counts[i, j]:.2g}"
        r, g, b, _ = image.cmap(image.norm(value))
        dark = 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5
        ax.text(j, i, text, ha="center", va="center", fontsize=_small(), color="white" if dark else "black")
    ticks = np.arange(len(class_names))
    shown_names = [display_name(n) for n in class_names]
    ax.set_xticks(ticks, shown_names, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, [f"{n}\n(n = {t})" if integer else n for n, t in zip(shown_names, totals)])
    ax.set(xlabel="Predicted class", ylabel="True class")
    ax.spines[:].set_visible(False)
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.85, label="Share of true class" if normalise else "Count")
    missed = _missed_tumor_cells(class_names)
    for i, j in missed:
        ax.add_patch(Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False, lw=1.6,
                               edgecolor=OKABE_ITO["vermillion"]))
    if missed:
        n_missed = int(sum(counts[i, j] for i, j in missed))
        n_tumors = int(sum(totals[i] for i, _ in missed))
        handle = Rectangle((0, 0), 1, 1, fill=False, lw=1.6, edgecolor=OKABE_ITO["vermillion"])
        label = f"missed tumor (tumor called “no tumor”): {n_missed} of {n_tumors} tumors"
        fig.legend([handle], [label], loc="outside lower center", handlelength=1.2)
    return fig


# --------------------------------------------------------------------------------------------- reliability
#: Bins with fewer scans than this are drawn faded: their accuracy is too uncertain to read off the bar.
FEW_SCANS = 10


def _bin_style(counts: np.ndarray, few: int) -> list[float]:
    """Bar opacity per bin: full for bins of at least ``few`` scans, faded below."""
    return [1.0 if n >= few else 0.35 for n in counts]


def _draw_reliability(ax: Axes, bins: Mapping[str, Any], title: str, xlabel: str, ylabel: str,
                      few: int = FEW_SCANS, two_lines: bool = False) -> None:
    """Guo et al.-style diagram: observed accuracy per bin with its Wilson 95% interval (where ``bins``
    has one), gap to the diagonal, bins of fewer than ``few`` scans faded, scans per bin in a row on top;
    ``two_lines`` puts the ECE under the title (a panel with its n would not fit it on one line)."""
    edges = np.asarray(bins["edges"])
    width = np.diff(edges)
    acc = _as_float_array(bins["accuracy"])
    conf = _as_float_array(bins["confidence"])
    counts = np.asarray(bins["count"])
    alphas = _bin_style(counts, few)
    observed = ax.bar(edges[:-1], acc, width=width, align="edge", color=PALETTE[0], edgecolor="white", lw=0.4)
    gap = ax.bar(edges[:-1], conf - acc, bottom=acc, width=width, align="edge", facecolor="none",
                 edgecolor=OKABE_ITO["vermillion"], hatch="////", lw=0)
    for bar, hatch, alpha in zip(observed, gap, alphas):
        bar.set_alpha(alpha)
        hatch.set_alpha(alpha)
    if "accuracy_low" in bins:
        low, high = _as_float_array(bins["accuracy_low"]), _as_float_array(bins["accuracy_high"])
        ax.errorbar(edges[:-1] + width / 2, acc, yerr=np.fmax(np.vstack([acc - low, high - acc]), 0.0), fmt="none",
                    ecolor="0.1", elinewidth=0.7, capsize=1.2, capthick=0.7)
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.3")
    for left, w, n in zip(edges[:-1], width, counts):
        if n:
            ax.text(left + w / 2, 1.04, str(n), rotation=90, ha="center", va="bottom", fontsize=_small(),
                    color="0.25")
    ax.text(-0.02, 1.04, "n", transform=ax.get_yaxis_transform(), ha="right", va="bottom", fontsize=_small(),
            color="0.25", style="italic")
    ax.axhline(1.02, lw=0.4, color="0.8")
    ax.spines["left"].set_bounds(0, 1)  # the axis is accuracy; the row above it holds counts
    ax.set(xlim=(0, 1), ylim=(0, 1.27), yticks=np.linspace(0, 1, 6), xlabel=xlabel, ylabel=ylabel,
           title=f"{title}\nECE {bins['ece']:.4f}" if two_lines else f"{title} (ECE {bins['ece']:.4f})")


def _reliability_handles(few: int, intervals: bool) -> tuple[list[Any], list[str]]:
    """Legend entries of a reliability diagram (drawn below the panels, where they cover no bar)."""
    handles: list[Any] = [Patch(color=PALETTE[0]), Patch(color=PALETTE[0], alpha=0.35),
                          Patch(facecolor="none", edgecolor=OKABE_ITO["vermillion"], hatch="////", lw=0),
                          Line2D([], [], ls="--", lw=0.8, color="0.3")]
    labels = ["observed", f"observed, bin of < {few} scans (faded)", "gap to calibrated", "perfectly calibrated"]
    if intervals:
        handles.insert(2, Line2D([], [], color="0.1", ls="none", marker="|", ms=8, mew=0.8))
        labels.insert(2, "Wilson 95% CI")
    labels.append("scans per bin (top row)")
    handles.append(Line2D([], [], ls="none", marker="$n$", ms=4.5, color="0.25"))
    return handles, labels


def _reliability_legend(fig: Figure, panels: Sequence[Mapping[str, Any]], few: int, ncols: int) -> None:
    fig.legend(*_reliability_handles(few, any("accuracy_low" in b for b in panels)), loc="outside lower center",
               ncols=ncols, handlelength=1.6, columnspacing=1.2)


def _reliability_labels(bins: Mapping[str, Any], class_names: Sequence[str] | None) -> tuple[str, str, str]:
    """Title (with the class's n where known), x label and y label for the overall diagram or one class's
    one-vs-rest diagram."""
    class_index = bins.get("class_index")
    if class_index is None:
        overall = f"Overall (n = {bins['n']})" if bins.get("n") is not None else "Overall"
        return overall, "Confidence (max probability)", "Accuracy"
    name = display_name(class_names[class_index]) if class_names is not None else str(class_index)
    n = bins.get("n_positive")
    title = f"{name} (n = {n})" if n is not None else name
    return title, f"Predicted P({name})", f"Observed share of {name}"


@styled
def plot_reliability(
    bins: Mapping[str, Any], class_names: Sequence[str] | None = None, ax: Axes | None = None,
    title: str | None = None, few: int = FEW_SCANS,
) -> Figure:
    """Reliability diagram of ``bins`` (:func:`xai_bt.evaluation.calibration.reliability_bins`, with
    Wilson intervals drawn where :func:`xai_bt.evaluation.metrics.with_bin_intervals` added them), overall
    or one-vs-rest for the class of ``bins["class_index"]``; the row of numbers on top is how many samples
    fall in each bin, bins of fewer than ``few`` are faded, the title gives the ECE. The legend goes below
    the axes (outside the caller's ``ax``, to its right)."""
    own = ax is None
    fig, ax = _figure_axes(ax, (ONE_COLUMN[0], 3.4))
    label, xlabel, ylabel = _reliability_labels(bins, class_names)
    two_lines = title is None and bins.get("n_positive") is not None
    _draw_reliability(ax, bins, title or label, xlabel, ylabel, few, two_lines=two_lines)
    handles, labels = _reliability_handles(few, "accuracy_low" in bins)
    if own:
        fig.legend(handles, labels, loc="outside lower center", ncols=2, columnspacing=1.0, handlelength=1.4)
    else:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


@styled
def plot_reliability_grid(panels: Sequence[Mapping[str, Any]], class_names: Sequence[str] | None = None,
                          title: str | None = None, few: int = FEW_SCANS) -> Figure:
    """One reliability diagram per entry of ``panels``, e.g. overall followed by each class's one-vs-rest
    diagram (:func:`xai_bt.evaluation.metrics.reliability_panels`); two-column width, three per row, the
    legend below them all, ``title`` above."""
    if not panels:
        raise ValueError("no reliability bins to draw")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(TWO_COLUMN[0], 2.6 * nrows + 0.5))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for panel, bins in enumerate(panels):
        _draw_reliability(axes[panel], bins, *_reliability_labels(bins, class_names), few,
                          two_lines=any(b.get("n") is not None for b in panels))
    for ax in axes[len(panels):]:
        ax.remove()
    _reliability_legend(fig, panels, few, ncols=3)
    if title:
        fig.suptitle(title)
    return fig


@styled
def plot_reliability_comparison(
    bins_by_label: Mapping[str, Mapping[str, Any]], class_names: Sequence[str] | None = None,
    title: str | None = None, few: int = FEW_SCANS,
) -> Figure:
    """Reliability diagrams of the same samples under several probability sets side by side, e.g.
    ``{"Raw (T = 1)": bins_raw, "Temperature-scaled (T = 1.8)": bins_cal}``, each from
    :func:`xai_bt.evaluation.calibration.reliability_bins` (two-column width, shared y, legend below)."""
    if not bins_by_label:
        raise ValueError("no probability sets to compare")
    fig = Figure(figsize=(TWO_COLUMN[0], 3.6))
    axes = fig.subplots(1, len(bins_by_label), squeeze=False, sharey=True).ravel()
    for panel, (label, bins) in enumerate(bins_by_label.items()):
        _, xlabel, ylabel = _reliability_labels(bins, class_names)
        _draw_reliability(axes[panel], bins, label, xlabel, ylabel if panel == 0 else "", few)
    _reliability_legend(fig, list(bins_by_label.values()), few, ncols=3)
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------- training
def _to_float(value: Any) -> float:
    return np.nan if value in ("", None) else float(value)


def _read_history(
    history: Mapping[str, Sequence[Any]] | str | Path,
) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """A Keras ``History.history`` dict, or a CSVLogger file, as equal-length float arrays, and the
    training phase of each epoch if recorded (xai_bt's merged logs have a ``phase`` column). Other
    non-numeric columns are ignored."""
    if isinstance(history, (str, Path)):
        with Path(history).open(newline="", encoding="utf-8") as fh:
            records = list(csv.DictReader(fh))
        if not records:
            raise ValueError(f"{history}: no epochs recorded")
        history = {key: [r.get(key) for r in records] for key in records[0]}
    phases = None
    arrays = {}
    for key, values in history.items():
        if key == "phase":
            phases = [str(v) for v in values]
            continue
        try:
            arrays[key] = np.asarray([_to_float(v) for v in values], dtype=np.float64)
        except (TypeError, ValueError):
            continue  # a text column
    lengths = {len(a) for a in arrays.values()} | ({len(phases)} if phases is not None else set())
    if len(lengths) > 1:
        raise ValueError(f"history series differ in length: { {k: len(a) for k, a in arrays.items()} }")
    return arrays, phases


#: history columns whose name does not say what they are
_METRIC_NAMES = {"outside_share": "CAM share outside mask"}


def _pretty(key: str) -> str:
    return _METRIC_NAMES.get(key) or key.replace("_", " ").capitalize()


@styled
def plot_training_curves(history: Mapping[str, Sequence[float]] | str | Path, title: str | None = None) -> Figure:
    """One panel per metric (training and validation; the best validation epoch is marked), plus the
    learning rate on a log axis if recorded. Accepts ``History.history`` or a CSVLogger file; where a
    ``phase`` column records training phases (frozen backbone, fine-tuning), a dashed line marks where
    each new phase starts. ``title`` (e.g. which stage of a cascade) goes above the panels."""
    series, phases = _read_history(history)
    if not series:
        raise ValueError("no numeric training series in the history")
    n_epochs = len(next(iter(series.values())))
    epochs = series.pop("epoch") + 1 if "epoch" in series else np.arange(1, n_epochs + 1)
    starts = [i for i in range(1, n_epochs) if phases and phases[i] != phases[i - 1]]
    panels = [k for k in series if not k.startswith("val_") and k not in _LR_KEYS]
    panels += [k for k in _LR_KEYS if k in series][:1]
    if not panels:
        raise ValueError(f"no training series to plot in {sorted(series)}")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    width = ONE_COLUMN[0] if ncols == 1 else TWO_COLUMN[0]
    fig = Figure(figsize=(width, 2.3 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, key in zip(axes, panels):
        if key in _LR_KEYS:
            ax.semilogy(epochs, series[key], color=PALETTE[2])
        else:
            ax.plot(epochs, series[key], color=PALETTE[0], label="training")
            val = series.get(f"val_{key}")
            if val is not None and np.isfinite(val).any():
                best = int(np.nanargmin(val) if "loss" in key else np.nanargmax(val))
                ax.plot(epochs, val, color=PALETTE[1], label="validation")
                ax.plot(epochs[best], val[best], "o", ms=4, color=PALETTE[1])
                ax.axvline(epochs[best], ls=":", lw=0.8, color="0.5")
                ax.legend()
        for i in starts:
            ax.axvline(epochs[i] - 0.5, ls="--", lw=0.8, color="0.3")
            phase = phases[i].replace("_", " ") if phases else ""
            ax.text(epochs[i] - 0.5, 1.0, f" {phase}", transform=ax.get_xaxis_transform(), ha="left", va="top",
                    fontsize=_small(), color="0.3")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs, even for a 2-epoch run
        ax.set(xlabel="Epoch", ylabel=_pretty(key))
    for ax in axes[len(panels):]:
        ax.remove()
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------- comparison
def _errors(rows: Sequence[Mapping[str, Any]], value: str, low: str, high: str) -> tuple[np.ndarray, np.ndarray]:
    """Point values and asymmetric error bars; a missing bound draws no bar on that side."""
    x = _as_float_array([r.get(value) for r in rows])
    lo = _as_float_array([r.get(low) for r in rows])
    hi = _as_float_array([r.get(high) for r in rows])
    return x, np.vstack([np.nan_to_num(x - lo), np.nan_to_num(hi - x)])


def _common(rows: Sequence[Mapping[str, Any]], key: str) -> Any:
    """The value of ``key`` shared by every row, or None where they differ or none has it."""
    values = {r.get(key) for r in rows}
    return values.pop() if len(values) == 1 else None


def _series_label(base: str, n: Any) -> str:
    return f"{base} (n = {n})" if n is not None else base


@styled
def plot_architecture_comparison(rows: Sequence[Mapping[str, Any]], ax: Axes | None = None) -> Figure:
    """Forest plot of accuracy with CI per model, on the official test split and, where given, on the
    leakage-free subset (keys: name, accuracy, ci_low, ci_high, leakage_free_accuracy, leakage_free_ci_low,
    leakage_free_ci_high; optional n and leakage_free_n). Each estimate is printed beside its interval; the
    n of each part goes in the legend when all models share it, else under each model's name. Rows are drawn
    top to bottom in the given order."""
    own_figure = ax is None
    fig, ax = _figure_axes(ax, (ONE_COLUMN[0], 1.0 + 0.45 * len(rows)))
    y = np.arange(len(rows))[::-1].astype(np.float64)
    has_free = any(r.get("leakage_free_accuracy") is not None for r in rows)
    offset = 0.17 if has_free else 0.0
    n_all, n_free = _common(rows, "n"), _common(rows, "leakage_free_n")
    series = [("", "Official test split", "o", PALETTE[0], n_all, offset)]
    if has_free:
        series.append(("leakage_free_", "Leakage-free subset", "s", PALETTE[1], n_free, -offset))
    right = []
    for prefix, label, marker, color, n, dy in series:
        x, err = _errors(rows, f"{prefix}accuracy", f"{prefix}ci_low", f"{prefix}ci_high")
        ax.errorbar(x, y + dy, xerr=err, fmt=marker, ms=3.5, capsize=2, lw=1.0, color=color,
                    label=_series_label(label, n))
        for xi, yi, hi in zip(x, y + dy, x + err[1]):
            if np.isfinite(xi):
                ax.annotate(f"{xi:.3f}", (hi, yi), xytext=(3, 0), textcoords="offset points", ha="left",
                            va="center", fontsize=_small(), color="0.15")
                right.append(hi)
    names = []
    for r in rows:
        parts = [str(r[k]) for k in ("n", "leakage_free_n") if r.get(k) is not None]
        differ = n_all is None or (has_free and n_free is None)
        names.append(str(r["name"]) + (f"\n(n = {' / '.join(parts)})" if parts and differ else ""))
    ax.set_yticks(y, names)
    lo, hi = ax.get_xlim()
    if right:  # room for the printed estimates right of the widest interval
        ax.set_xlim(lo, max(hi, max(right) + 0.18 * (max(right) - lo)))
    ax.set(xlabel="Accuracy (Wilson 95% CI)", ylim=(-0.6, len(rows) - 0.4))
    ax.grid(axis="x", lw=0.4, color="0.85")
    if own_figure:  # a figure legend, centred on the figure: long model names shift the axes right
        fig.legend(*ax.get_legend_handles_labels(), loc="outside upper center")
    else:
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2)
    return fig


@styled
def plot_twin_histogram(hist: Mapping[str, Any], threshold: float | None = None, ax: Axes | None = None,
                        title: str | None = None, log: bool = True) -> Figure:
    """Nearest-neighbour r of each test scan against the reference scans, compared as it is and mirrored
    (``hist`` from the data audit: ``edges`` plus ``identity`` / ``mirror_lr`` counts): copies pile up
    near r = 1, distinct scans lower, and the threshold belongs in the valley between them."""
    fig, ax = _figure_axes(ax, TWO_COLUMN)
    edges = np.asarray(hist["edges"], float)
    for key, label, colour in (("identity", "as it is", OKABE_ITO["blue"]),
                               ("mirror_lr", "mirrored left-right", OKABE_ITO["vermillion"]),
                               ("any", "any twin transform", OKABE_ITO["black"])):
        if key in hist:
            ax.stairs(np.asarray(hist[key]), edges, label=label, color=colour,
                      linestyle=":" if key == "any" else "-")
    if threshold is not None:
        ax.axvline(threshold, color="0.35", linestyle="--", linewidth=0.8)
        ax.annotate(f"threshold {threshold:g}", (threshold, 1), xycoords=("data", "axes fraction"),
                    xytext=(-3, -2), textcoords="offset points", ha="right", va="top", fontsize=7, color="0.35")
    if log:
        ax.set_yscale("symlog", linthresh=1)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel(f"Pearson r of 32x32 thumbnails with the closest reference scan (r < {edges[1]:g} in the first bin)")
    ax.set_ylabel("test scans per bin" + (" (log scale)" if log else ""))
    ax.legend(loc="upper left")
    if title:
        ax.set_title(title)
    return fig

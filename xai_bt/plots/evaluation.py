"""Evaluation figures. Drawing only: numbers in, Figure out. Every number comes already computed from
:mod:`xai_bt.evaluation.metrics` or :mod:`xai_bt.evaluation.calibration` (as scikit-learn's
``RocCurveDisplay(fpr=..., tpr=...)`` takes what ``roc_curve`` computed), so one computation can feed a
figure, a table and a results file. With only labels and probabilities, compute then draw:

=======================================================  =============================================
numbers (``xai_bt.evaluation``)                           figure (this module)
=======================================================  =============================================
``metrics.roc_plot_data(y, p, names)``                    ``plot_roc(**data)``
``metrics.pr_curves(y, p, names)``                        ``plot_pr(curves)``
``metrics.classification_report_dict(y, p, names)``       ``plot_confusion(report["confusion_matrix"], names)``
``calibration.reliability_bins(y, p, n_bins, c)``         ``plot_reliability(bins, names)``
``metrics.reliability_panels(y, p, n_bins)``              ``plot_reliability_grid(panels, names)``
``{label: calibration.reliability_bins(y, p_i)}``         ``plot_reliability_comparison(bins_by_label, names)``
=======================================================  =============================================

Every function draws in the project style, onto ``ax`` if given or a new one-column figure, and returns
the Figure; save it with :func:`xai_bt.plots.style.save_figure`. No pyplot: figures are plain ``Figure``
objects, safe headless and in loops (Jupyter still displays a returned Figure).
"""
from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

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
        return ax.get_figure(root=True), ax
    fig = Figure(figsize=figsize)
    return fig, fig.add_subplot()


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
@styled
def plot_roc(
    curves: Mapping[str, Any],
    auc_ci: Mapping[str, Any] | None = None,
    bands: Mapping[str, Any] | None = None,
    ax: Axes | None = None,
    zoom: float | None | str = "auto",
) -> Figure:
    """One-vs-rest ROC curve per class plus the macro average (``curves`` from
    :func:`xai_bt.evaluation.metrics.roc_curves`); the legend gives each AUC, with its 95% CI where
    ``auc_ci`` (:func:`~xai_bt.evaluation.metrics.auc_with_ci`) is given. ``bands``
    (:func:`~xai_bt.evaluation.metrics.roc_bands`) shades each class's pointwise 95% band of the true
    positive rate. ``zoom`` adds an inset of the top-left corner, FPR in [0, zoom] and TPR in
    [1 - zoom, 1]; "auto" does so when every class's AUC is above 0.9 (the curves then hug the corner),
    None never. From predictions: ``plot_roc(**roc_plot_data(y, p, names))``."""
    fig, ax = _figure_axes(ax)
    for i, (name, curve) in enumerate(curves["per_class"].items()):
        color = class_color(name, i)
        value = _ci_text(auc_ci["per_class"][name]) if auc_ci else _num(curve["auc"])
        if bands is not None and name in bands["per_class"]:
            b = bands["per_class"][name]
            ax.fill_between(bands["fpr"], _as_float_array(b["low"]), _as_float_array(b["high"]), step="post",
                            color=color, alpha=0.18, lw=0)
        ax.plot(curve["fpr"], curve["tpr"], color=color, label=f"{name}  {value}")
    aucs = [c["auc"] for c in curves["per_class"].values()]
    value = _ci_text(auc_ci["macro"]) if auc_ci else _num(np.mean(aucs))
    ax.plot(curves["macro"]["fpr"], curves["macro"]["tpr"], color=OKABE_ITO["black"], ls="--",
            label=f"macro  {value}")
    ax.plot([0, 1], [0, 1], ls=":", lw=0.8, color="0.6")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="False positive rate (1 − specificity)",
           ylabel="True positive rate (sensitivity)", title="ROC, one-vs-rest")
    ax.legend(loc="lower right", title="AUC [95% CI]" if auc_ci else "AUC", title_fontsize=7)
    if zoom == "auto":
        worst = min(aucs) if aucs and None not in aucs else 0.0
        zoom = None if worst < 0.9 else (0.1 if worst > 0.98 else 0.25)
    if zoom:
        _roc_inset(ax, curves, bands, float(zoom))
    return fig


def _roc_inset(ax: Axes, curves: Mapping[str, Any], bands: Mapping[str, Any] | None, zoom: float) -> None:
    """Magnified top-left corner of a ROC plot, above the legend."""
    inset = ax.inset_axes([0.36, 0.56, 0.6, 0.36])
    for i, (name, curve) in enumerate(curves["per_class"].items()):
        color = class_color(name, i)
        if bands is not None and name in bands["per_class"]:
            b = bands["per_class"][name]
            inset.fill_between(bands["fpr"], _as_float_array(b["low"]), _as_float_array(b["high"]), step="post",
                               color=color, alpha=0.18, lw=0)
        inset.plot(curve["fpr"], curve["tpr"], color=color, lw=1.0)
    inset.plot(curves["macro"]["fpr"], curves["macro"]["tpr"], color=OKABE_ITO["black"], ls="--", lw=1.0)
    inset.set(xlim=(0, zoom), ylim=(1 - zoom, 1.0 + zoom * 0.02))
    inset.tick_params(labelsize=6)
    inset.locator_params(nbins=3)
    inset.spines[["top", "right"]].set_visible(True)
    ax.indicate_inset_zoom(inset, edgecolor="0.5", lw=0.6)


@styled
def plot_pr(curves: Mapping[str, Any], ax: Axes | None = None) -> Figure:
    """One-vs-rest precision-recall curve per class plus the micro average, with average precision
    (``curves`` from :func:`xai_bt.evaluation.metrics.pr_curves`)."""
    fig, ax = _figure_axes(ax)
    for i, (name, curve) in enumerate(curves["per_class"].items()):
        ax.plot(curve["recall"], curve["precision"], drawstyle="steps-post", color=class_color(name, i),
                label=f"{name}  {_num(curve['average_precision'])}")
    micro = curves["micro"]
    ax.plot(micro["recall"], micro["precision"], drawstyle="steps-post", color=OKABE_ITO["black"], ls="--",
            label=f"micro  {_num(micro['average_precision'])}")
    ax.set(xlim=(-0.01, 1.01), ylim=(0.0, 1.02), xlabel="Recall (sensitivity)", ylabel="Precision",
           title="Precision-recall, one-vs-rest")
    ax.legend(loc="lower left", title="Average precision", title_fontsize=7)
    return fig


# --------------------------------------------------------------------------------------------- confusion
@styled
def plot_confusion(
    cm: Any,
    class_names: Sequence[str],
    normalise: bool = True,
    ax: Axes | None = None,
    cmap: str = MATRIX_CMAP,
) -> Figure:
    """Confusion matrix ``cm`` of counts (rows true, columns predicted), e.g. a
    :func:`~xai_bt.evaluation.metrics.classification_report_dict`'s ``confusion_matrix``. ``normalise``
    colours by row share (recall on the diagonal) and prints share and count; otherwise counts."""
    fig, ax = _figure_axes(ax)
    counts = np.asarray(cm)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    shown = shares if normalise else counts
    image = ax.imshow(shown, cmap=cmap, vmin=0, vmax=1 if normalise else None)
    integer = np.issubdtype(counts.dtype, np.integer)
    for (i, j), value in np.ndenumerate(shown):
        if normalise:
            text = f"{shares[i, j]:.0%}" + (f"\n({counts[i, j]})" if integer else "")
        else:
            text = f"{counts[i, j]}" if integer else f"{counts[i, j]:.2g}"
        r, g, b, _ = image.cmap(image.norm(value))
        dark = 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5
        ax.text(j, i, text, ha="center", va="center", fontsize=6.5, color="white" if dark else "black")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="Predicted class", ylabel="True class")
    ax.spines[:].set_visible(False)
    fig.colorbar(image, ax=ax, shrink=0.85, label="Share of true class" if normalise else "Count")
    return fig


# --------------------------------------------------------------------------------------------- reliability
def _draw_reliability(ax: Axes, bins: Mapping[str, Any], title: str, xlabel: str, ylabel: str,
                      legend: bool) -> None:
    """Guo et al.-style diagram: observed accuracy per bin, gap to the diagonal, bin counts on top."""
    edges = np.asarray(bins["edges"])
    width = np.diff(edges)
    acc = _as_float_array(bins["accuracy"])
    conf = _as_float_array(bins["confidence"])
    ax.bar(edges[:-1], acc, width=width, align="edge", color=PALETTE[0], edgecolor="white", lw=0.4,
           label="Observed")
    ax.bar(edges[:-1], conf - acc, bottom=acc, width=width, align="edge", facecolor="none",
           edgecolor=OKABE_ITO["vermillion"], hatch="////", lw=0, label="Gap to calibrated")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.3", label="Perfectly calibrated")
    for left, w, a, c, n in zip(edges[:-1], width, acc, conf, bins["count"]):
        if n:
            ax.text(left + w / 2, max(a, c) + 0.02, str(n), rotation=90, ha="center", va="bottom",
                    fontsize=5, color="0.3")
    ax.set(xlim=(0, 1), ylim=(0, 1.2), yticks=np.linspace(0, 1, 6), xlabel=xlabel, ylabel=ylabel,
           title=f"{title} (ECE {bins['ece']:.4f})")
    if legend:
        ax.legend(loc="upper left", fontsize=6)


def _reliability_labels(class_index: int | None, class_names: Sequence[str] | None) -> tuple[str, str, str]:
    """Title, x label and y label for the overall diagram or one class's one-vs-rest diagram."""
    if class_index is None:
        return "Overall", "Confidence (max probability)", "Accuracy"
    name = class_names[class_index] if class_names is not None else str(class_index)
    return name, f"Predicted P({name})", f"Observed share of {name}"


@styled
def plot_reliability(
    bins: Mapping[str, Any], class_names: Sequence[str] | None = None, ax: Axes | None = None
) -> Figure:
    """Reliability diagram of ``bins`` (:func:`xai_bt.evaluation.calibration.reliability_bins`), overall
    or one-vs-rest for the class of ``bins["class_index"]``; the number above each bar is how many
    samples fall in that bin, the title gives the ECE."""
    fig, ax = _figure_axes(ax)
    _draw_reliability(ax, bins, *_reliability_labels(bins.get("class_index"), class_names), legend=True)
    return fig


@styled
def plot_reliability_grid(panels: Sequence[Mapping[str, Any]], class_names: Sequence[str] | None = None) -> Figure:
    """One reliability diagram per entry of ``panels``, e.g. overall followed by each class's one-vs-rest
    diagram (:func:`xai_bt.evaluation.metrics.reliability_panels`); two-column width, three per row."""
    if not panels:
        raise ValueError("no reliability bins to draw")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(TWO_COLUMN[0], 2.5 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for panel, bins in enumerate(panels):
        _draw_reliability(axes[panel], bins, *_reliability_labels(bins.get("class_index"), class_names),
                          legend=panel == 0)
    for ax in axes[len(panels):]:
        ax.remove()
    return fig


@styled
def plot_reliability_comparison(
    bins_by_label: Mapping[str, Mapping[str, Any]], class_names: Sequence[str] | None = None
) -> Figure:
    """Reliability diagrams of the same samples under several probability sets side by side, e.g.
    ``{"Raw (T = 1)": bins_raw, "Temperature-scaled (T = 1.8)": bins_cal}``, each from
    :func:`xai_bt.evaluation.calibration.reliability_bins` (two-column width, shared y)."""
    if not bins_by_label:
        raise ValueError("no probability sets to compare")
    fig = Figure(figsize=(TWO_COLUMN[0], TWO_COLUMN[1] * 0.95))
    axes = fig.subplots(1, len(bins_by_label), squeeze=False, sharey=True).ravel()
    for panel, (label, bins) in enumerate(bins_by_label.items()):
        _, xlabel, ylabel = _reliability_labels(bins.get("class_index"), class_names)
        _draw_reliability(axes[panel], bins, label, xlabel, ylabel if panel == 0 else "", legend=panel == 0)
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


def _pretty(key: str) -> str:
    return key.replace("_", " ").capitalize()


@styled
def plot_training_curves(history: Mapping[str, Sequence[float]] | str | Path) -> Figure:
    """One panel per metric (training and validation; the best validation epoch is marked), plus the
    learning rate on a log axis if recorded. Accepts ``History.history`` or a CSVLogger file; where a
    ``phase`` column records training phases (frozen backbone, fine-tuning), a dashed line marks where
    each new phase starts."""
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
            ax.text(epochs[i] - 0.5, 1.0, f" {phases[i].replace('_', ' ')}", transform=ax.get_xaxis_transform(),
                    ha="left", va="top", fontsize=6, color="0.3")
        ax.set(xlabel="Epoch", ylabel=_pretty(key))
    for ax in axes[len(panels):]:
        ax.remove()
    return fig


# --------------------------------------------------------------------------------------------- comparison
def _errors(rows: Sequence[Mapping[str, Any]], value: str, low: str, high: str) -> tuple[np.ndarray, np.ndarray]:
    """Point values and asymmetric error bars; a missing bound draws no bar on that side."""
    x = _as_float_array([r.get(value) for r in rows])
    lo = _as_float_array([r.get(low) for r in rows])
    hi = _as_float_array([r.get(high) for r in rows])
    return x, np.vstack([np.nan_to_num(x - lo), np.nan_to_num(hi - x)])


@styled
def plot_architecture_comparison(rows: Sequence[Mapping[str, Any]], ax: Axes | None = None) -> Figure:
    """Forest plot of accuracy with CI per model, on the official test split and, where given, on the
    leakage-free subset (keys: name, accuracy, ci_low, ci_high, leakage_free_accuracy,
    leakage_free_ci_low, leakage_free_ci_high). Rows are drawn top to bottom in the given order."""
    own_figure = ax is None
    fig, ax = _figure_axes(ax, (ONE_COLUMN[0], 0.9 + 0.32 * len(rows)))
    y = np.arange(len(rows))[::-1].astype(np.float64)
    x, err = _errors(rows, "accuracy", "ci_low", "ci_high")
    has_free = any(r.get("leakage_free_accuracy") is not None for r in rows)
    offset = 0.14 if has_free else 0.0
    ax.errorbar(x, y + offset, xerr=err, fmt="o", ms=4, capsize=2, color=PALETTE[0], label="Official test split")
    if has_free:
        xf, errf = _errors(rows, "leakage_free_accuracy", "leakage_free_ci_low", "leakage_free_ci_high")
        ax.errorbar(xf, y - offset, xerr=errf, fmt="s", ms=4, capsize=2, color=PALETTE[1],
                    label="Leakage-free subset")
    ax.set_yticks(y, [str(r["name"]) for r in rows])
    ax.set(xlabel="Accuracy (95% CI)", ylim=(-0.7, len(rows) - 0.3))
    ax.grid(axis="x", lw=0.4, color="0.85")
    if own_figure:  # a figure legend, centred on the figure: long model names shift the axes right
        fig.legend(*ax.get_legend_handles_labels(), loc="outside upper center", ncols=2)
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

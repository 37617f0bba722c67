"""Draw one `Explanation`: the scan, one overlay per method (`plots.heatmap.draw_heatmap`), the class
probabilities, and a title with the predicted class, its confidence and the target the maps explain.
The numbers behind it are in `attribution.summary`; writing it to disk in `io.explanation_files`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from xai_bt.attribution.result import Explanation
from xai_bt.names import display_name
from xai_bt.plots.heatmap import MASK_COLOR, draw_heatmap, legend_handles, outline
from xai_bt.plots.style import TWO_COLUMN, class_color, style_context

__all__ = ["plot_explanation", "plot_map_tile", "CASCADE_STAGES", "TILE_SIZE"]

_COLUMNS = 4          # panels per row; a 4-wide grid keeps each panel ~1.8 in at two-column width
_CELL = 1.8           # inches per panel column (map plus its colour bar)


def plot_explanation(expl: Explanation, top_k: float = 0.1, mask: np.ndarray | None = None) -> Figure:
    """Scan, class probabilities and one overlay per method, on a grid of equal cells (7.2 in wide for
    four or more panels per row, narrower for fewer, so one method leaves no empty gaps).

    Every overlay has its own labelled colour bar, the outline of its top-`top_k` region and its peak
    marked; `mask` (or `expl.mask`), an (S, S) bool ground truth, is outlined dashed on every panel. The
    legend sits in the first empty cell, or below the grid when every cell is used.
    """
    mask = expl.mask if mask is None else np.asarray(mask, dtype=bool)
    if mask is not None and mask.shape != expl.image.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the model input {expl.image.shape}; "
                         "resample it with Preprocessing.prepare_mask")
    n_panels = 2 + len(expl.maps)
    nrows = -(-n_panels // _COLUMNS)
    ncols = -(-n_panels // nrows)
    title_lines = _title(expl).count("\n") + 1
    spare = nrows * ncols > n_panels
    height = nrows * 0.92 * _CELL + 0.16 * title_lines + (0 if spare else 0.3)
    with style_context():
        fig = Figure(figsize=(min(TWO_COLUMN[0], ncols * _CELL), height), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        _draw_scan(axes[0], expl.image, mask)
        _draw_probabilities(axes[1], expl)
        for ax, (method, heatmap) in zip(axes[2:], expl.maps.items()):
            draw_heatmap(ax, expl.image, heatmap, top_k=top_k, mask=mask, colorbar=fig, mark_peak=True)
            title = _panel_title(method)
            long = max(map(len, title.split("\n"))) > 20      # a layer name ("(block4a_expand_activation)")
            ax.set_title(title, fontsize=7 if long else None)
            if method in expl.audit:
                ax.text(0.5, -0.03, _audit_caption(expl.audit[method]), transform=ax.transAxes, ha="center",
                        va="top", fontsize=6)
        for ax in axes[n_panels:]:
            ax.set_axis_off()
        handles = legend_handles(top_k, mask is not None, peak=True)
        if spare:   # in the first empty cell, beside the last panel, not far below the grid
            axes[n_panels].legend(handles=handles, loc="center left", fontsize=7)
        else:
            fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=7)
        fig.suptitle(_title(expl))
    return fig


#: a review tile's size in inches: at 120 dpi the map itself is over 320 px wide
TILE_SIZE = (3.6, 3.5)


def plot_map_tile(expl: Explanation, method: str, top_k: float = 0.1, mask: np.ndarray | None = None) -> Figure:
    """One method's map alone, large enough to read (the review page's tile): the overlay with its labelled
    colour bar, the top-`top_k` outline, the peak marked, and the class it explains with its probability."""
    mask = expl.mask if mask is None else np.asarray(mask, dtype=bool)
    p = float(np.asarray(expl.probabilities)[expl.target])
    with style_context():
        fig = Figure(figsize=TILE_SIZE, layout="constrained")
        ax = fig.subplots()
        draw_heatmap(ax, expl.image, expl.maps[method], top_k=top_k, mask=mask, colorbar=fig, mark_peak=True)
        ax.set_title(f"{display_name(method)}\nexplains {display_name(expl.target_name)} (p = {p:.2f})")
        fig.legend(handles=legend_handles(top_k, mask is not None, peak=True), loc="outside lower center",
                   ncols=2, fontsize=7)
    return fig


def _audit_caption(line: str) -> str:
    """A method's audit score (`audit.recommend.score_line`) in short lines that fit under a 1.8 in panel."""
    text = line.replace("audit: peak inside the tumor on ", "audit: peak in the tumor\non ", 1)
    return text.replace(" (95% CI", "\n(95% CI", 1).replace("; fails the randomisation check",
                                                             "\nfails the randomisation check")


def _panel_title(method: str) -> str:
    """A method's name for a 1.8 in panel: a long one breaks before its parenthesis (a long layer name in it
    also at its middle underscore), else at the space nearest its middle, so no title is wider than its map."""
    name = display_name(method)
    if len(name) <= 18 or " " not in name:
        return name
    if " (" in name:
        head, layer = name.split(" (", 1)
        if len(layer) > 20 and "_" in layer:       # a layer name: break it at its middle underscore too
            cut = min((i for i, ch in enumerate(layer) if ch == "_"), key=lambda i: abs(i - len(layer) / 2))
            layer = layer[:cut] + "\n" + layer[cut:]
        return f"{head}\n({layer}"
    cut = min((i for i, ch in enumerate(name) if ch == " "), key=lambda i: abs(i - len(name) / 2))
    return name[:cut] + "\n" + name[cut + 1:]


def _draw_scan(ax, image: np.ndarray, mask: np.ndarray | None) -> None:
    """The prepared scan as the model saw it, with the mask outline when known."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    outline(ax, mask, MASK_COLOR, "--")
    ax.set_title("Model input")
    ax.set_axis_off()


def _draw_probabilities(ax, expl: Explanation) -> None:
    """Bars of all class probabilities on 0-1 in the class colours, each named and valued above its bar
    (inside the panel, so the panel is as wide as the others); the prediction in bold."""
    probs = np.asarray(expl.probabilities, dtype=np.float64)
    best = int(np.argmax(probs))
    y = np.arange(len(probs), dtype=np.float64)
    ax.barh(y, probs, color=[class_color(n, i) for i, n in enumerate(expl.class_names)], height=0.35)
    for yi, (i, name) in zip(y, enumerate(expl.class_names)):
        ax.text(0, yi - 0.22, f"{display_name(name)}  {probs[i]:.2f}", va="bottom", ha="left", fontsize=7,
                fontweight="bold" if i == best else "normal")
    ax.set_xlim(0, 1)
    ax.set_ylim(len(probs) - 0.6, -0.8)
    ax.set_xticks([0, 0.5, 1], ["0", "0.5", "1"])
    ax.set_yticks([])
    ax.spines["left"].set_visible(False)
    ax.set_title("Class probability")


CASCADE_STAGES = {"stage1": "stage 1 (tumor or no tumor)", "stage2": "stage 2 (tumor type)"}


def _title(expl: Explanation) -> str:
    """Two to five short lines: file and model; prediction and view; the target if not the prediction; the
    cascade stage; the first competence warning, when the scan is unlike the training scans."""
    source = _shorten(Path(expl.path).name if expl.path else "array input", 40)
    lines = [f"{source}  ·  model: {_shorten(expl.model_name or 'unnamed', 30)}"]
    line2 = f"Predicted: {display_name(expl.predicted)} (confidence {expl.confidence:.2f})"
    if expl.view_probabilities is not None and expl.view_names:
        vp = np.asarray(expl.view_probabilities)
        line2 += f"  ·  view: {expl.view_names[int(np.argmax(vp))]} ({float(np.max(vp)):.2f})"
    lines.append(line2)
    if expl.target_name != expl.predicted:
        p = float(np.asarray(expl.probabilities)[expl.target])
        lines.append(f"Maps explain: {display_name(expl.target_name)} (p = {p:.2f}), not the predicted class")
    if expl.network in CASCADE_STAGES:
        lines.append(f"Maps: cascade {CASCADE_STAGES[expl.network]}")
    if expl.warnings:   # unlike the training scans (model.competence): the first reason, short, and a count
        reason = expl.warnings[0].split(": ", 1)[-1].split(" (")[0]
        more = f" (+{len(expl.warnings) - 1} more)" if len(expl.warnings) > 1 else ""
        lines += ["WARNING: unlike the training scans", _shorten(reason, 56 - len(more)) + more]
    return "\n".join(lines)


def _shorten(text: str, limit: int) -> str:
    """Cut the middle of long names so title lines never run past the figure."""
    return text if len(text) <= limit else text[:limit // 2 - 1] + "…" + text[-(limit - limit // 2):]

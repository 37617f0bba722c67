"""Show one `Explanation`: the scan, one overlay per method, and the prediction the maps explain.

`plot_explanation` only draws. `save_explanation` writes the figure, a JSON sidecar holding the numbers a
reader needs to check the picture (peak, top-k area and range of every map, in input pixels and in
fractions of the original image) and, if asked, the raw maps. It never replaces earlier results unless
told to, checks every target before writing any, and writes each file atomically (temporary file, then
rename), so an interrupted run leaves no half-written file behind.

Colour: non-negative maps (the CAM family, saliency) use `HEATMAP_CMAP` (magma) from 0 to their maximum;
signed maps (Integrated Gradients, SHAP, occlusion) use `DIVERGING_CMAP` centred on 0, so red is evidence
for the target class and blue evidence against it. Both are colour-blind-safe; jet is never used.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from xai_bt.attribution.registry import label as method_label
from xai_bt.attribution.result import Explanation
from xai_bt.plots.style import DIVERGING_CMAP, HEATMAP_CMAP, OKABE_ITO, TWO_COLUMN, class_color, save_figure, style_context

#: Outline of the top-k region (sky blue reads on magma's dark and bright ends and on RdBu's red).
TOP_K_COLOR = OKABE_ITO["sky_blue"]
#: Outline of the ground-truth tumor mask (dashed, so it differs from the top-k outline in shape too).
MASK_COLOR = OKABE_ITO["bluish_green"]
#: Where `save_explanation` looks for the scan's geometry (written by `scan_geometry`).
GEOMETRY_KEY = "geometry"

_COLUMNS = 4          # panels per row; a 4-wide grid keeps each panel ~1.8 in at two-column width
_TITLE_WIDTH = 70     # characters per title line before a file name is shortened


# --- numbers shown in the figure and the sidecar -----------------------------------------------------

def is_signed(heatmap: np.ndarray) -> bool:
    """True when the map has negative values, i.e. it carries evidence against the class as well."""
    return bool(np.nanmin(heatmap) < 0)


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """(row, col) of the map's maximum at input resolution; the first one in row-major order on ties."""
    row, col = np.unravel_index(int(np.nanargmax(heatmap)), heatmap.shape)
    return int(row), int(col)


def top_region(heatmap: np.ndarray, top_k: float) -> np.ndarray:
    """Bool mask of the top `top_k` fraction of pixels, keeping only positive values.

    The threshold is the k-th largest value (k = round(top_k * pixels), at least 1); ties at the
    threshold are all kept. Pixels <= 0 never count: a map that is zero almost everywhere (a ReLU'd CAM)
    must not get an arbitrary "top" region drawn around nothing.
    """
    if not 0 < top_k <= 1:
        raise ValueError(f"top_k must be a fraction in (0, 1], got {top_k}")
    values = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=-np.inf)
    k = max(1, int(round(top_k * values.size)))
    threshold = np.partition(values.ravel(), values.size - k)[values.size - k]
    return (values >= threshold) & (values > 0)


def scan_geometry(original_shape: tuple[int, int], head_box: tuple[int, int, int, int]) -> dict[str, list[int]]:
    """What `save_explanation` needs to map input pixels back to the original scan.

    Store the result in `Explanation.extra["geometry"]`; `head_box` is `Preprocessing.head_box(gray)`
    (y0, y1, x0, x1) of the decoded scan `gray` of shape `original_shape`.
    """
    return {"original_shape": [int(v) for v in original_shape], "head_box": [int(v) for v in head_box]}


def to_original_fraction(row: int, col: int, input_size: int, geometry: dict[str, Any]) -> tuple[float, float]:
    """Input pixel (row, col) -> (row, col) as fractions of the original scan's height and width.

    Inverts `Preprocessing.apply_geometry`: resize of the square back to its side, removal of the centred
    zero padding, shift by the head box. Pixel centres are used; points in the padding are clipped to 0..1.
    """
    height, width = geometry["original_shape"]
    y0, y1, x0, x1 = geometry["head_box"]
    h, w = y1 - y0, x1 - x0
    side = max(h, w)
    scale = side / input_size
    y = (row + 0.5) * scale - (side - h) // 2 + y0
    x = (col + 0.5) * scale - (side - w) // 2 + x0
    return float(np.clip(y / height, 0, 1)), float(np.clip(x / width, 0, 1))


def map_summary(heatmap: np.ndarray, top_k: float, geometry: dict[str, Any] | None = None,
                view_attribution: np.ndarray | None = None) -> dict[str, Any]:
    """The numbers behind one overlay: peak, top-k area, range, and the strongest view dimensions."""
    row, col = peak(heatmap)
    region = top_region(heatmap, top_k)
    out: dict[str, Any] = {
        "peak": {"row": row, "col": col},
        "peak_original_fraction": None,
        "top_k_area_pixels": int(region.sum()),
        "top_k_area_fraction": float(region.mean()),
        "min": float(np.nanmin(heatmap)),
        "max": float(np.nanmax(heatmap)),
        "signed": is_signed(heatmap),
    }
    if geometry is not None:
        fy, fx = to_original_fraction(row, col, heatmap.shape[0], geometry)
        out["peak_original_fraction"] = {"row": fy, "col": fx}
    if view_attribution is not None:
        out["view_attribution_top5"] = top_dimensions(view_attribution, 5)
    return out


def top_dimensions(vector: np.ndarray, n: int) -> list[dict[str, float | int]]:
    """The `n` entries of largest magnitude, strongest first, with their signed values."""
    v = np.asarray(vector, dtype=np.float64).ravel()
    order = np.argsort(-np.abs(v), kind="stable")[:n]
    return [{"dim": int(i), "value": float(v[i])} for i in order]


def explanation_summary(expl: Explanation, top_k: float = 0.1) -> dict[str, Any]:
    """Everything the JSON sidecar holds: prediction, view, and `map_summary` for every method."""
    geometry = expl.extra.get(GEOMETRY_KEY)
    probs = np.asarray(expl.probabilities, dtype=np.float64)
    out: dict[str, Any] = {
        "path": expl.path,
        "model": expl.model_name,
        "probabilities": dict(zip(expl.class_names, map(float, probs))),
        "prediction": expl.predicted,
        "confidence": expl.confidence,
        "target": expl.target_name,
        "target_probability": float(probs[expl.target]),
        "layer": expl.layer,
        "network": expl.network,
        "input_size": int(expl.image.shape[0]),
        "original_shape": geometry["original_shape"] if geometry else None,
        "view": None,
        "view_probabilities": None,
        "top_k": top_k,
    }
    if expl.view_probabilities is not None and expl.view_names:
        vp = np.asarray(expl.view_probabilities, dtype=np.float64)
        out["view"] = expl.view_names[int(np.argmax(vp))]
        out["view_probabilities"] = dict(zip(expl.view_names, map(float, vp)))
    out["methods"] = {m: map_summary(np.asarray(h), top_k, geometry, expl.view_attribution.get(m))
                      for m, h in expl.maps.items()}
    for m, method in out["methods"].items():
        if isinstance(expl.extra.get(m), dict):      # settings and checks the method reported
            method["details"] = expl.extra[m]
    return out


# --- the figure ---------------------------------------------------------------------------------

def plot_explanation(expl: Explanation, top_k: float = 0.1, mask: np.ndarray | None = None) -> Figure:
    """Scan, class probabilities and one overlay per method, laid out for a two-column page (7.2 in).

    Every overlay has its own colour bar and the outline of its top-`top_k` region; `mask` (or
    `expl.mask`), an (S, S) bool ground truth, is outlined dashed on every panel.
    """
    mask = expl.mask if mask is None else np.asarray(mask, dtype=bool)
    if mask is not None and mask.shape != expl.image.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the model input {expl.image.shape}; "
                         "resample it with Preprocessing.prepare_mask")
    n_panels = 2 + len(expl.maps)
    nrows = -(-n_panels // _COLUMNS)
    ncols = -(-n_panels // nrows)
    width = TWO_COLUMN[0]
    with style_context():
        fig = Figure(figsize=(width, nrows * 0.82 * width / ncols + 0.5), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        _draw_scan(axes[0], expl.image, mask)
        _draw_probabilities(axes[1], expl)
        for ax, (method, heatmap) in zip(axes[2:], expl.maps.items()):
            _draw_overlay(fig, ax, expl.image, np.asarray(heatmap, dtype=np.float64), method, top_k, mask)
        for ax in axes[n_panels:]:
            ax.set_axis_off()
        fig.suptitle(_title(expl))
        fig.legend(handles=_legend_handles(top_k, mask is not None), loc="outside lower center",
                   ncols=2, fontsize=7)
    return fig


def _draw_scan(ax, image: np.ndarray, mask: np.ndarray | None) -> None:
    """The prepared scan as the model saw it, with the mask outline when known."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    _outline(ax, mask, MASK_COLOR, "--")
    ax.set_title("Scan (model input)")
    ax.set_axis_off()


def _draw_probabilities(ax, expl: Explanation) -> None:
    """Horizontal bars of all class probabilities in the class colours; the prediction in bold."""
    probs = np.asarray(expl.probabilities, dtype=np.float64)
    names = [n.replace("_", " ") for n in expl.class_names]
    y = np.arange(len(names))
    ax.barh(y, probs, color=[class_color(n, i) for i, n in enumerate(expl.class_names)], height=0.65)
    for yi, p in zip(y, probs):
        ax.text(p + 0.03, yi, f"{p:.2f}", va="center", fontsize=7)
    best = int(np.argmax(probs))
    ax.set_yticks(y, names)
    ax.get_yticklabels()[best].set_fontweight("bold")
    ax.set_xlim(0, 1.25)
    ax.set_xticks([0, 0.5, 1])
    ax.invert_yaxis()
    ax.set_box_aspect(1)
    ax.set_title("Class probability")


def _draw_overlay(fig: Figure, ax, image: np.ndarray, heatmap: np.ndarray, method: str, top_k: float,
                  mask: np.ndarray | None) -> None:
    """Map over the scan, opacity growing with |value| so the anatomy shows where the map is weak."""
    heatmap = np.nan_to_num(heatmap)
    signed = is_signed(heatmap)
    scale = float(np.abs(heatmap).max()) or 1.0
    norm = Normalize(-scale, scale) if signed else Normalize(0, scale)
    cmap = DIVERGING_CMAP if signed else HEATMAP_CMAP
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    strength = np.abs(heatmap) / scale
    ax.imshow(heatmap, cmap=cmap, norm=norm, alpha=np.clip(1.5 * strength, 0, 0.85) if signed else 0.2 + 0.65 * strength)
    _outline(ax, _smoothed(top_region(heatmap, top_k)), TOP_K_COLOR, "-")
    _outline(ax, mask, MASK_COLOR, "--")
    bar = fig.colorbar(ScalarMappable(norm, cmap), ax=ax, shrink=0.8, pad=0.03, aspect=15)
    bar.locator = MaxNLocator(3)
    bar.ax.tick_params(labelsize=6)
    bar.formatter.set_powerlimits((-3, 4))
    bar.update_ticks()
    ax.set_title(method_label(method))
    ax.set_axis_off()


def _smoothed(region: np.ndarray) -> np.ndarray:
    """The region as drawn: Gaussian-smoothed (sigma = 1% of the side) and cut at 0.5, so the scattered
    top pixels of noisy maps (saliency) outline the clusters they form instead of hundreds of specks.
    Top pixels spread like pure noise form no cluster and get no outline; the sidecar still counts them."""
    import cv2

    sigma = max(1.0, region.shape[0] / 100)
    return cv2.GaussianBlur(region.astype(np.float32), (0, 0), sigma) >= 0.5


def _outline(ax, region: np.ndarray | None, color: str, linestyle: str) -> None:
    """Contour of a bool region at pixel resolution (nothing for an empty or full region)."""
    if region is None or not region.any() or region.all():
        return
    ax.contour(region.astype(np.float32), levels=[0.5], colors=[color], linewidths=0.8, linestyles=linestyle)


def _legend_handles(top_k: float, with_mask: bool) -> list[Line2D]:
    """Legend entries for the outlines drawn on the panels."""
    handles = [Line2D([], [], color=TOP_K_COLOR, lw=1.0, label=f"top {top_k:.0%} of map (positive values)")]
    if with_mask:
        handles.append(Line2D([], [], color=MASK_COLOR, lw=1.0, ls="--", label="tumor mask"))
    return handles


CASCADE_STAGES = {"stage1": "stage 1 (tumor or no tumor)", "stage2": "stage 2 (tumor type)"}


def _title(expl: Explanation) -> str:
    """Two or three short lines: file and model; prediction and view; the target if not the prediction."""
    source = _shorten(Path(expl.path).name if expl.path else "array input", 40)
    lines = [f"{source}  ·  model: {_shorten(expl.model_name or 'unnamed', 30)}"]
    line2 = f"Predicted: {expl.predicted.replace('_', ' ')} (confidence {expl.confidence:.2f})"
    if expl.view_probabilities is not None and expl.view_names:
        vp = np.asarray(expl.view_probabilities)
        line2 += f"  ·  view: {expl.view_names[int(np.argmax(vp))]} ({float(np.max(vp)):.2f})"
    lines.append(line2)
    if expl.target_name != expl.predicted:
        p = float(np.asarray(expl.probabilities)[expl.target])
        lines.append(f"Maps explain: {expl.target_name.replace('_', ' ')} (p = {p:.2f}), not the predicted class")
    if expl.network in CASCADE_STAGES:
        lines.append(f"Maps: cascade {CASCADE_STAGES[expl.network]}")
    return "\n".join(lines)


def _shorten(text: str, limit: int) -> str:
    """Cut the middle of long names so title lines never run past the figure."""
    return text if len(text) <= limit else text[:limit // 2 - 1] + "…" + text[-(limit - limit // 2):]


# --- files ------------------------------------------------------------------------------------------

def output_paths(stem: str, out_dir: str | os.PathLike, formats: Sequence[str] = ("png", "pdf"),
                 methods: Sequence[str] = (), save_maps: bool = False) -> list[Path]:
    """Every file `save_explanation` writes for a scan: figures, the JSON sidecar, maps if asked."""
    out = Path(out_dir)
    paths = [out / f"{stem}.{fmt.lstrip('.')}" for fmt in formats] + [out / f"{stem}.json"]
    if save_maps:
        paths += [out / f"{stem}_{method}.npy" for method in methods]
    return paths


def default_stem(expl: Explanation) -> str:
    """Output file stem: the scan's file name without suffix, or "explanation" for array input."""
    return Path(expl.path).stem if expl.path else "explanation"


def save_explanation(expl: Explanation, out_dir: str | os.PathLike, formats: Sequence[str] = ("png", "pdf"),
                     overwrite: bool = False, save_maps: bool = False, top_k: float = 0.1,
                     mask: np.ndarray | None = None, stem: str | None = None, sync_dir: bool = True) -> list[Path]:
    """Write `<stem>.<fmt>` figures, the `<stem>.json` sidecar and, with `save_maps`, `<stem>_<method>.npy`,
    each atomically and fsynced (no formats: the sidecar only). `sync_dir=False` leaves the folder's fsync
    to a caller writing many scans.

    Raises FileExistsError naming the first existing target unless `overwrite`; nothing is written then.
    Returns the paths written, figures first.
    """
    from xai_bt.io.batches import fsync_dir, write_atomic

    stem = stem or default_stem(expl)
    targets = output_paths(stem, out_dir, formats, list(expl.maps), save_maps)
    if not overwrite:
        for path in targets:
            if path.exists():
                raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if formats:
        _save_figures_atomically(plot_explanation(expl, top_k, mask), out, stem, formats)
    summary = json.dumps(explanation_summary(expl, top_k), indent=2, default=_json_value) + "\n"
    write_atomic(out / f"{stem}.json", summary.encode(), sync_dir=False)
    if save_maps:
        for method, heatmap in expl.maps.items():
            arr = np.asarray(heatmap, dtype=np.float32)
            write_atomic(out / f"{stem}_{method}.npy", lambda fh, a=arr: np.save(fh, a), sync_dir=False)
    if sync_dir:
        fsync_dir(out)
    return targets


def _json_value(value: Any) -> Any:
    """numpy scalars and arrays as JSON numbers and lists; anything else by its text."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return str(value)


def _save_figures_atomically(fig: Figure, out: Path, stem: str, formats: Sequence[str]) -> None:
    """Render with the project's `save_figure` into a temporary folder beside the targets, then move each
    file into place (fsynced, renamed)."""
    from xai_bt.io.batches import move_atomic, temp_dir

    tmp = temp_dir(out, stem)
    try:
        for path in save_figure(fig, tmp / stem, formats, overwrite=True):
            move_atomic(path, out / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        fig.clear()

"""The one heatmap overlay: a map over its scan, the top-k outline and the mask outline. The explanation
figure and the audit gallery both draw with it, so a map looks the same wherever it is shown.

Colour: non-negative maps (the CAM family, saliency) use `HEATMAP_CMAP` (magma) from 0 to their maximum;
signed maps (Integrated Gradients, SHAP, occlusion) use `DIVERGING_CMAP` centred on 0, so red is evidence
for the target class and blue evidence against it. Both are colour-blind-safe; jet is never used.
"""
from __future__ import annotations

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from xai_bt.attribution.summary import is_signed, peak, top_region
from xai_bt.plots.style import DIVERGING_CMAP, HEATMAP_CMAP, OKABE_ITO

__all__ = ["TOP_K_COLOR", "MASK_COLOR", "draw_heatmap", "outline", "legend_handles"]

#: Outline of the top-k region (sky blue reads on magma's dark and bright ends and on RdBu's red).
TOP_K_COLOR = OKABE_ITO["sky_blue"]
#: Outline of the ground-truth tumor mask (dashed, so it differs from the top-k outline in shape too).
MASK_COLOR = OKABE_ITO["bluish_green"]


def draw_heatmap(ax, image: np.ndarray, heatmap: np.ndarray, *, top_k: float | None = 0.1,
                 mask: np.ndarray | None = None, colorbar: Figure | None = None, mark_peak: bool = False) -> None:
    """Map over the scan, opacity growing with |value| from fully transparent at 0 (the anatomy shows
    where the map is weak); the top-`top_k` outline (None: none), the mask dashed, a labelled colour bar
    on `colorbar` (a Figure) and the map's peak as a white + if asked."""
    heatmap = np.nan_to_num(np.asarray(heatmap, dtype=np.float64))
    signed = is_signed(heatmap)
    scale = float(np.abs(heatmap).max()) or 1.0
    norm = Normalize(-scale, scale) if signed else Normalize(0, scale)
    cmap = DIVERGING_CMAP if signed else HEATMAP_CMAP
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    strength = np.abs(heatmap) / scale
    ax.imshow(heatmap, cmap=cmap, norm=norm, alpha=np.clip(1.5 * strength, 0, 0.85))
    if top_k is not None:
        outline(ax, _smoothed(top_region(heatmap, top_k)), TOP_K_COLOR, "-")
    outline(ax, mask, MASK_COLOR, "--")
    if mark_peak:
        row, col = peak(heatmap)
        ax.plot(col, row, marker="+", color="white", ms=8, mew=1.5)
    if colorbar is not None:
        cax = ax.inset_axes((1.04, 0.0, 0.06, 1.0))   # beside the map and as tall, however the grid is laid out
        bar = colorbar.colorbar(ScalarMappable(norm, cmap), cax=cax)
        low = -scale if signed else 0.0
        ticks = [low, (low + scale) / 2, scale]  # labelled at both ends and the middle, 2 significant digits
        bar.set_ticks(ticks, labels=[f"{t:.2g}" if t else "0" for t in ticks])
        bar.ax.tick_params(labelsize=6)
        bar.set_label("attribution (signed)" if signed else "attribution", fontsize=6)
    ax.set_axis_off()


def _smoothed(region: np.ndarray) -> np.ndarray:
    """The region as drawn: Gaussian-smoothed (sigma = 1% of the side) and cut at 0.5, so the scattered
    top pixels of noisy maps (saliency) outline the clusters they form instead of hundreds of specks.
    Top pixels spread like pure noise form no cluster and get no outline; the sidecar still counts them."""
    import cv2

    sigma = max(1.0, region.shape[0] / 100)
    return cv2.GaussianBlur(region.astype(np.float32), (0, 0), sigma) >= 0.5


def outline(ax, region: np.ndarray | None, color: str, linestyle: str) -> None:
    """Contour of a bool region at pixel resolution (nothing for an empty or full region)."""
    if region is None or not region.any() or region.all():
        return
    ax.contour(region.astype(np.float32), levels=[0.5], colors=[color], linewidths=0.8, linestyles=linestyle)


def legend_handles(top_k: float, with_mask: bool, peak: bool = False) -> list[Line2D]:
    """Legend entries for the outlines (and the peak marker, if drawn) on the panels."""
    handles = [Line2D([], [], color=TOP_K_COLOR, lw=1.0, label=f"top {top_k:.0%} of map (positive values)")]
    if with_mask:
        handles.append(Line2D([], [], color=MASK_COLOR, lw=1.0, ls="--", label="tumor mask"))
    if peak:
        handles.append(Line2D([], [], color="black", marker="+", ls="none", ms=7, mew=1.5, label="peak"))
    return handles

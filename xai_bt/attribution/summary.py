"""The numbers behind an explanation's picture: peak, top-k region, range of every map, and where the
peak sits in the original scan. The JSON sidecar, the report and the web page all show these."""
from __future__ import annotations

from typing import Any

import numpy as np

from xai_bt.attribution.result import Explanation

__all__ = ["GEOMETRY_KEY", "is_signed", "peak", "top_region", "scan_geometry", "to_original_fraction",
           "map_summary", "top_dimensions", "explanation_summary"]

#: Where `explanation_summary` looks for the scan's geometry (written by `scan_geometry`).
GEOMETRY_KEY = "geometry"


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
        "score": expl.score,
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
            error = expl.extra[m].get("completeness_error")
            if error is not None and error > COMPLETENESS_TOLERANCE:
                method["warning"] = (f"attributions sum to within {error:.0%} of the score change, not "
                                     f"{COMPLETENESS_TOLERANCE:.0%}: the path integral is inexact for this scan "
                                     "(raise steps)")
    return out


#: Integrated Gradients' completeness error above which a sidecar warns
COMPLETENESS_TOLERANCE = 0.05

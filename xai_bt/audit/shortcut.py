"""Shortcut audit: how much of a heatmap's evidence lies where no tumor can be?

A classifier that reads scanner text, burned-in labels, field-of-view borders or the black background
("Clever Hans" features) puts attribution outside the head or in the image corners. These scores measure
the share of *positive* attribution (evidence for the explained class) in those places; a share far
above the region's area fraction on many images is a red flag worth looking at with
:func:`worst_cases`. Per-class summaries with CIs: ``xai_bt.audit.localisation.summarise(scores, groups=labels)``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
from scipy import ndimage


def head_mask(image: np.ndarray) -> np.ndarray:
    """Bool (H, W) mask of the head in a grayscale scan (uint8 or float in [0, 255]).

    Same recipe as :func:`xai_bt.model.preprocessing.head_bounding_box`: Otsu's threshold on a blurred copy
    (halved, at least 10, to keep dark tissue), the largest connected bright region, then its holes
    filled (ventricles, dark lesions and necrotic cores belong to the head). When no region covers 5%
    of the image the whole image is returned, as the bounding box falls back to the whole image.
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {img.shape}")
    gray = np.clip(np.round(img), 0, 255).astype(np.uint8)
    blur = cv2.GaussianBlur(gray, (5, 5), 0)
    thr, _ = cv2.threshold(blur, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    binary = (blur > max(thr * 0.5, 10)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return np.ones(img.shape, dtype=bool)
    idx = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[idx, cv2.CC_STAT_AREA] < 0.05 * img.size:
        return np.ones(img.shape, dtype=bool)
    return ndimage.binary_fill_holes(labels == idx)


def corner_mask(shape: tuple[int, int], frac: float = 0.1) -> np.ndarray:
    """Bool mask of the four corner squares, each ``frac`` of the image's side (where scanners and
    datasets burn in text and markers)."""
    if not 0 < frac <= 0.5:
        raise ValueError(f"frac must be in (0, 0.5], got {frac}")
    h, w = shape
    ch, cw = max(1, int(round(frac * h))), max(1, int(round(frac * w)))
    m = np.zeros((h, w), dtype=bool)
    for rows in (slice(0, ch), slice(h - ch, h)):
        for cols in (slice(0, cw), slice(w - cw, w)):
            m[rows, cols] = True
    return m


def _positive_share(heatmap: np.ndarray, region: np.ndarray) -> float:
    """Share of positive attribution inside ``region``; NaN when the map has no positive value."""
    h = np.asarray(heatmap, dtype=np.float64)
    if h.shape != region.shape:
        raise ValueError(f"heatmap shape {h.shape} differs from the image's {region.shape}")
    pos = np.clip(h, 0, None)
    total = pos.sum()
    return float(pos[region].sum() / total) if total > 0 else float("nan")


def outside_head_share(heatmap: np.ndarray, image: np.ndarray) -> float:
    """Share of the heatmap's positive attribution outside the head (``heatmap`` aligned with ``image``)."""
    return _positive_share(heatmap, ~head_mask(image))


def corner_share(heatmap: np.ndarray, frac: float = 0.1) -> float:
    """Share of the heatmap's positive attribution in the four corner squares (see :func:`corner_mask`);
    a uniform map scores the corners' area, ``4 frac^2``."""
    h = np.asarray(heatmap)
    return _positive_share(h, corner_mask(h.shape, frac))


def shortcut_scores(heatmaps: np.ndarray, images: np.ndarray, frac: float = 0.1) -> dict[str, np.ndarray]:
    """Both shares for a batch: heatmaps (N, S, S) with the images the model saw, (N, S, S) or
    (N, S, S, 1). Returns name -> (N,) array (NaN where a map has no positive attribution)."""
    maps = np.asarray(heatmaps)
    imgs = np.asarray(images)
    if imgs.ndim == 4 and imgs.shape[-1] == 1:
        imgs = imgs[..., 0]
    if maps.ndim != 3 or imgs.shape != maps.shape:
        raise ValueError(f"need heatmaps (N, S, S) and images of the same shape; got {maps.shape} and {imgs.shape}")
    corners = corner_mask(maps.shape[1:], frac)
    return {
        "outside_head_share": np.array([outside_head_share(h, img) for h, img in zip(maps, imgs)]),
        "corner_share": np.array([_positive_share(h, corners) for h in maps]),
    }


def worst_cases(scores: Mapping[str, Any], k: int = 10, key: str = "outside_head_share") -> list[dict[str, Any]]:
    """The ``k`` images with the highest ``scores[key]``, worst first, for visual inspection.

    Each entry is ``{"index": i, <every score name>: value}``; images whose ``key`` is NaN are skipped.
    """
    if key not in scores:
        raise ValueError(f"no score {key!r}; have {sorted(scores)}")
    values = np.asarray(scores[key], dtype=np.float64)
    valid = np.flatnonzero(np.isfinite(values))
    top = valid[np.argsort(-values[valid], kind="stable")[:k]]
    return [{"index": int(i), **{name: float(np.asarray(v)[i]) for name, v in scores.items()}} for i in top]

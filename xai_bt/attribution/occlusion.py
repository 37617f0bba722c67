"""Occlusion (Zeiler & Fergus 2014): how much the class score drops when a patch of the scan is blanked.

Model-agnostic and easy to explain to a clinician, at the price of one forward pass per patch position;
all positions of all images go through the model in full batches. Extra inputs (the view vector) are
held fixed, so the map explains the image input of the network as it is.
"""
from __future__ import annotations

import numpy as np

from xai_bt.attribution.gradients import Attribution, accumulate, batch_pairs, scores


def patch_corners(size: int, patch: int, stride: int) -> np.ndarray:
    """Top-left offsets along one axis, the last one flush with the edge so every pixel is covered."""
    corners = list(range(0, size - patch + 1, stride))
    if corners[-1] != size - patch:
        corners.append(size - patch)
    return np.array(corners)


def _inside(pixels: np.ndarray, corners: np.ndarray, patch: int) -> np.ndarray:
    """(len(corners), len(pixels)): whether each pixel lies in the patch starting at each corner."""
    return (pixels[None, :] >= corners[:, None]) & (pixels[None, :] < corners[:, None] + patch)


def occlusion(model, inputs: list[np.ndarray], targets: np.ndarray, *, batch_size: int = 32,
              patch: int | None = None, stride: int | None = None, fill: float = 0.0) -> Attribution:
    """Score drop f(x) - f(x with a patch set to `fill`), averaged over the patches covering each pixel.
    Signed: positive where hiding the pixel lowers the target's score. Defaults: patch = S/8,
    stride = patch/2 (black fill, the scan's background)."""
    x = inputs[0]
    n, h, w = x.shape[:3]
    patch = patch or max(1, min(h, w) // 8)
    stride = stride or max(1, patch // 2)
    if not 0 < patch <= min(h, w) or stride < 1:
        raise ValueError(f"need 0 < patch <= {min(h, w)} and stride >= 1, got patch={patch}, stride={stride}")
    cy, cx = patch_corners(h, patch, stride), patch_corners(w, patch, stride)
    ys, xs = (c.ravel() for c in np.meshgrid(cy, cx, indexing="ij"))
    rows, cols = np.arange(h), np.arange(w)
    score_fn = scores(model)
    base = np.concatenate([score_fn([a[s:s + batch_size] for a in inputs])
                           for s in range(0, n, batch_size)])[np.arange(n), targets]
    total = np.zeros((n, h, w), np.float64)
    for img, p in batch_pairs(n, len(ys), batch_size):
        window = (_inside(rows, ys[p], patch)[:, :, None] & _inside(cols, xs[p], patch)[:, None, :])
        occluded = np.where(window[..., None], np.float32(fill), x[img])
        drop = base[img] - score_fn([occluded] + [a[img] for a in inputs[1:]])[np.arange(len(img)), targets[img]]
        accumulate(total, img, window * drop[:, None, None])
    coverage = np.outer(_inside(rows, cy, patch).sum(0), _inside(cols, cx, patch).sum(0))
    maps = (total / coverage).astype(np.float32)
    return Attribution(maps, info={"patch": patch, "stride": stride, "fill": fill})

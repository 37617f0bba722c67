"""Localisation: does a heatmap point at the tumor? Scores of heatmaps against ground-truth masks.

Every function takes ``(heatmaps, masks)``: one heatmap (H, W) with one bool mask (H, W) gives a float;
a batch (N, H, W) with masks (N, H, W) gives an (N,) array. Higher is better for all four scores and each
lies in [0, 1]. A score that is undefined for an image (empty mask; a heatmap with no positive evidence
or no peak) is NaN, so a summary can report how many images it rests on instead of silently counting
them as hits or misses.

The definitions follow the papers and agree with Quantus 0.6.0 on generic (tie-free, non-negative) maps;
where ours differ, the docstring says why. In short:

* ``pointing_game``: Zhang et al. 2018, with an optional tolerance (Quantus' ``PointingGame`` has none).
  A constant map (an all-zero Grad-CAM happens) is all peaks, so Quantus scores it a hit whenever the
  mask is non-empty (and refuses a batch of only such maps); ours scores it NaN: it points nowhere.
* ``energy_pointing_game``: the share of *positive* attribution inside the mask (Wang et al. 2020,
  energy-based pointing game). Quantus' ``RelevanceMassAccuracy`` sums *signed* attribution, so for
  signed maps (Integrated Gradients, SHAP) it can leave [0, 1]; ``AttributionLocalisation`` with
  ``positive_attributions=True, abs=False`` is the same as ours.
* ``relevance_rank_accuracy``: Arras et al. 2022, the fraction of the top-|mask| pixels inside the mask.
  Quantus breaks ties by ``np.argsort`` order (which favours some image positions); ours averages over
  tied pixels, i.e. the expected score under random tie-breaking (matters for ReLU-clipped CAMs, which
  have many exact zeros).
* ``topk_iou``: IoU of the top-k fraction of pixels with the mask. Quantus' ``TopKIntersection`` takes k
  as a pixel count and returns the fraction of those k pixels inside the mask (a precision, not an IoU);
  ``IoU = p k / (k + |mask| - p k)`` converts one into the other. Ties are averaged as above.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from xai_bt.evaluation.metrics import bootstrap_mean_ci

#: Names of the scores returned by :func:`localisation_scores`, in report order.
LOCALISATION_SCORES = ("pointing_game", "energy_pointing_game", "relevance_rank_accuracy", "topk_iou")


# ---------------------------------------------------------------------------------------------- inputs
def _as_batch(heatmaps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """Validate and return ``(maps (N, H, W) float64, masks (N, H, W) bool, was_single)``."""
    h = np.asarray(heatmaps, dtype=np.float64)
    m = np.asarray(masks)
    if h.ndim not in (2, 3):
        raise ValueError(f"heatmaps must be (H, W) or (N, H, W); got shape {h.shape}")
    if m.shape != h.shape:
        raise ValueError(f"masks must have the heatmaps' shape {h.shape}; got {m.shape} "
                         "(resample masks with Preprocessing.prepare_mask)")
    if not np.all(np.isfinite(h)):
        raise ValueError("heatmaps contain NaN or infinite values")
    single = h.ndim == 2
    if single:
        h, m = h[None], m[None]
    return h, m.astype(bool), single


def _result(values: np.ndarray, single: bool) -> float | np.ndarray:
    return float(values[0]) if single else values


def _top_weights(flat: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Soft membership (N, P) of each pixel in the top ``counts[i]`` pixels of row i.

    Pixels above the ``counts[i]``-th largest value count 1; pixels tied with it share the remaining
    places equally, which is the expectation over all ways of breaking the tie.
    """
    p = flat.shape[1]
    kth = p - np.clip(counts, 1, p)  # ascending position of the counts[i]-th largest value
    thresh = np.array([np.partition(row, k)[k] for row, k in zip(flat, kth)])[:, None]
    above = flat > thresh
    tied = flat == thresh
    share = (p - kth - above.sum(axis=1)) / tied.sum(axis=1)
    return above + tied * share[:, None]


# ---------------------------------------------------------------------------------------------- scores
def pointing_game(heatmaps: Any, masks: Any, tolerance_px: float = 0) -> float | np.ndarray:
    """Pointing game (Zhang et al. 2018): 1 if the heatmap's maximum lies in the mask, else 0.

    A peak within ``tolerance_px`` pixels (Euclidean) of the mask also counts; Zhang et al. used 15 px
    at 224 px to forgive small misalignment. With tied maxima it is a hit if any of them lies in the mask
    (as Quantus). NaN for an empty mask or a constant heatmap, which has no peak to point with.
    """
    h, m, single = _as_batch(heatmaps, masks)
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px}")
    flat, mflat = h.reshape(len(h), -1), m.reshape(len(m), -1)
    peak = flat == flat.max(axis=1, keepdims=True)
    if tolerance_px > 0:  # distance to the mask at each peak, rather than dilating every mask
        hit = np.array([np.any(ndimage.distance_transform_edt(~mi)[pi] <= tolerance_px) if mi.any() else False
                        for mi, pi in zip(m, peak.reshape(h.shape))], dtype=np.float64)
    else:
        hit = np.any(peak & mflat, axis=1).astype(np.float64)
    constant = flat.max(axis=1) == flat.min(axis=1)
    hit[constant | ~np.any(mflat, axis=1)] = np.nan
    return _result(hit, single)


def energy_pointing_game(heatmaps: Any, masks: Any) -> float | np.ndarray:
    """Share of the positive attribution that falls inside the mask (Wang et al. 2020; Arras et al.'s
    relevance mass accuracy restricted to positive evidence).

    Negative values are evidence *against* the class and are dropped, so signed and non-negative maps
    are scored on the same [0, 1] scale. A uniform map scores the mask's area fraction (chance level).
    NaN for an empty mask or a map with no positive value.
    """
    h, m, single = _as_batch(heatmaps, masks)
    pos = np.clip(h, 0, None).reshape(len(h), -1)
    mflat = m.reshape(len(m), -1)
    total = pos.sum(axis=1)
    inside = (pos * mflat).sum(axis=1)
    share = np.divide(inside, total, out=np.full(len(h), np.nan), where=total > 0)
    share[~np.any(mflat, axis=1)] = np.nan
    return _result(share, single)


def relevance_rank_accuracy(heatmaps: Any, masks: Any) -> float | np.ndarray:
    """Relevance rank accuracy (Arras et al. 2022): with K = |mask|, the fraction of the K highest-ranked
    pixels that lie inside the mask. Ties at the K-th value are averaged (expected score under random
    tie-breaking). A uniform map scores the mask's area fraction. NaN for an empty mask.
    """
    h, m, single = _as_batch(heatmaps, masks)
    flat, mflat = h.reshape(len(h), -1), m.reshape(len(m), -1)
    k = mflat.sum(axis=1)
    inside = (_top_weights(flat, k) * mflat).sum(axis=1)
    acc = np.divide(inside, k, out=np.full(len(h), np.nan), where=k > 0)
    return _result(acc, single)


def topk_iou(heatmaps: Any, masks: Any, k: float = 0.05) -> float | np.ndarray:
    """IoU between the top ``k`` fraction of pixels (k=0.05: the 5% highest) and the mask.

    Unlike rank accuracy, the selected area is fixed, so a map is also penalised for a mask much larger
    or smaller than its hot spot. The top-k set holds ``round(k * H * W)`` pixels; ties at its edge are
    averaged (the intersection's expectation under random tie-breaking). NaN for an empty mask.
    """
    if not 0 < k <= 1:
        raise ValueError(f"k is a fraction of pixels in (0, 1], e.g. 0.05 for the top 5%; got {k}")
    h, m, single = _as_batch(heatmaps, masks)
    flat, mflat = h.reshape(len(h), -1), m.reshape(len(m), -1)
    n_top = max(1, int(round(k * flat.shape[1])))
    inter = (_top_weights(flat, np.full(len(h), n_top)) * mflat).sum(axis=1)
    area = mflat.sum(axis=1)
    iou = np.divide(inter, n_top + area - inter, out=np.full(len(h), np.nan), where=area > 0)
    return _result(iou, single)


def localisation_scores(heatmaps: Any, masks: Any, tolerance_px: float = 0, k: float = 0.05,
                        chunk: int = 64) -> dict[str, np.ndarray]:
    """All four localisation scores of a batch (N, H, W) against masks (N, H, W): name -> (N,) array.

    Works through ``chunk`` images at a time, so memory stays small for thousands of full-size maps.
    """
    h, m = np.asarray(heatmaps), np.asarray(masks)
    if h.ndim != 3:
        raise ValueError(f"localisation_scores takes a batch (N, H, W); got shape {h.shape}")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in LOCALISATION_SCORES}
    for start in range(0, len(h), chunk):
        hc, mc = h[start:start + chunk], m[start:start + chunk]
        parts["pointing_game"].append(pointing_game(hc, mc, tolerance_px=tolerance_px))
        parts["energy_pointing_game"].append(energy_pointing_game(hc, mc))
        parts["relevance_rank_accuracy"].append(relevance_rank_accuracy(hc, mc))
        parts["topk_iou"].append(topk_iou(hc, mc, k=k))
    return {name: np.concatenate(v) if v else np.empty(0) for name, v in parts.items()}


# ------------------------------------------------------------------------------------------- summaries
def summarise(scores: Mapping[str, Any], groups: Sequence[Any] | None = None, n_boot: int = 1000,
              alpha: float = 0.05, seed: int = 0) -> dict[str, dict[str, dict[str, Any]]]:
    """Mean of every per-image score with a percentile-bootstrap (1 - alpha) CI, overall and per group.

    ``scores`` maps a name to an (N,) array (e.g. :func:`localisation_scores`); ``groups`` is an optional
    (N,) sequence of labels (true class, plane, ...). Returns ``{"all" | group: {score: {"mean", "low",
    "high", "n", "n_valid"}}}``, JSON-serialisable; NaN scores (undefined for that image) are left out of
    the mean and show as ``n_valid < n``; a group with no valid value has ``mean`` None. Images are
    resampled independently, so the CI assumes one image per patient-slice is roughly independent.
    """
    arrays = {name: np.asarray(v, dtype=np.float64).ravel() for name, v in scores.items()}
    lengths = {len(v) for v in arrays.values()}
    if len(lengths) > 1:
        raise ValueError(f"score arrays differ in length: { {k: len(v) for k, v in arrays.items()} }")
    n = lengths.pop() if lengths else 0
    rng = np.random.default_rng(seed)
    selections: dict[str, np.ndarray] = {"all": np.ones(n, dtype=bool)}
    if groups is not None:
        labels = np.asarray([str(g) for g in groups])
        if len(labels) != n:
            raise ValueError(f"{len(labels)} group labels for {n} scores")
        selections.update({str(g): labels == g for g in dict.fromkeys(labels)})
    return {g: {name: bootstrap_mean_ci(v[sel], n_boot, alpha, rng) for name, v in arrays.items()}
            for g, sel in selections.items()}

"""Faithfulness: does the model's output actually depend on the pixels a heatmap ranks highest?

Both tests remove pixels in the heatmap's order and watch the model's probability for the explained
class. ``predict_fn`` maps an (n, S, S, C) float batch to (n, K) probabilities (e.g. a Keras model's
``predict`` or ``Bundle.predict_prepared``); ``x`` is the (N, S, S, C) batch the model saw, ``heatmaps``
(N, S, S) maps at the same resolution, and ``target`` the explained class (one int or one per image).
Pixels are ranked by heatmap value, highest first; ties keep raster order (a stable sort), so give
constant regions a little noise if their order matters to you.

* :func:`deletion_insertion` (Petsiuk et al. 2018, RISE): deletion replaces the top-ranked pixels with a
  baseline step by step (a faithful map makes the probability fall fast: low AUC); insertion starts from
  the baseline and restores them (probability rises fast: high AUC).
* :func:`road` (Rong et al. 2022, ROAD): removes pixels by noisy linear imputation from their
  neighbours instead of a baseline colour, so the removal pattern itself leaks less shape information and
  the perturbed images stay closer to the data. Our imputation is the same linear system as Quantus'
  ``noisy_linear_imputation``, solved for the whole image at once. We implement it rather than call
  Quantus' ``ROAD`` because that needs a Keras/PyTorch model (not any ``predict_fn``), runs only the
  most-relevant-first order, reports only accuracy (argmax == target), aggregates only its first batch,
  and adds noise in absolute units from the global NumPy RNG.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from scipy.integrate import trapezoid
from scipy.sparse.linalg import spsolve

PredictFn = Callable[[np.ndarray], np.ndarray]

BASELINES = ("blur", "mean")
ORDERS = ("morf", "lerf")

# The 8-neighbourhood of ROAD's linear imputation (Rong et al. 2022): (dy, dx) -> weight.
_NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
               ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


# ---------------------------------------------------------------------------------------------- helpers
def _inputs(x: Any, heatmaps: Any, target: int | Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate; return x (N, S, S, C) float32, heatmaps (N, S*S) float64, targets (N,) int."""
    x = np.asarray(x, dtype=np.float32)
    h = np.asarray(heatmaps, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"x must be a model batch (N, S, S, C); got shape {x.shape}")
    if h.shape != x.shape[:3]:
        raise ValueError(f"heatmaps must be (N, S, S) = {x.shape[:3]} to match x; got {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError("heatmaps contain NaN or infinite values")
    t = np.broadcast_to(np.asarray(target, dtype=np.int64), (len(x),)).copy()
    return x, h.reshape(len(h), -1), t


def _ranks(flat_maps: np.ndarray, descending: bool = True) -> np.ndarray:
    """(N, P) rank of every pixel in removal order (0 = removed first); ties keep raster order."""
    order = np.argsort(-flat_maps if descending else flat_maps, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(order.shape[1])[None], axis=1)
    return ranks


def _predict_stream(predict_fn: PredictFn, make: Callable[[np.ndarray], np.ndarray], n_frames: int,
                    targets: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Run ``predict_fn`` over ``make(frame_ids)`` in batches; return (p_target, correct), each (n_frames,).

    Frames are built lazily batch by batch, so memory stays at one batch whatever N and the step count.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prob = np.empty(n_frames)
    correct = np.empty(n_frames, dtype=bool)
    for start in range(0, n_frames, batch_size):
        ids = np.arange(start, min(start + batch_size, n_frames))
        p = np.asarray(predict_fn(make(ids)), dtype=np.float64)
        if p.ndim != 2 or len(p) != len(ids):
            raise ValueError(f"predict_fn must return (n, K) probabilities; got shape {p.shape} for n={len(ids)}")
        prob[ids] = p[np.arange(len(ids)), targets[ids]]
        correct[ids] = p.argmax(axis=1) == targets[ids]
    return prob, correct


def _baseline(x: np.ndarray, kind: str, blur_sigma: float) -> np.ndarray:
    """What a removed pixel becomes: a heavily blurred copy of the image, or its mean intensity."""
    if kind == "blur":
        return ndimage.gaussian_filter(x, sigma=(0, blur_sigma, blur_sigma, 0), mode="nearest")
    if kind == "mean":
        return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape)
    raise ValueError(f"baseline must be one of {BASELINES}, got {kind!r}")


# ---------------------------------------------------------------------------------- deletion / insertion
def deletion_insertion(predict_fn: PredictFn, x: Any, heatmaps: Any, target: int | Sequence[int],
                       steps: int = 50, baseline: str = "blur", blur_sigma: float = 5.0,
                       batch_size: int = 64) -> dict[str, Any]:
    """Deletion and insertion curves and their AUCs (Petsiuk et al. 2018) for each image.

    At step i of ``steps`` the top ``round(i / steps * S*S)`` pixels of the heatmap are replaced by the
    baseline (deletion) or restored onto it (insertion). ``baseline="blur"`` is a Gaussian blur with
    ``blur_sigma`` pixels (RISE uses sigma 5 for insertion); ``"mean"`` the image's mean intensity. RISE
    deletes to zero, which on MRI equals the black background and so removes the tumor *and* its
    contrast with its surroundings; we use one baseline for both curves so the two are comparable.

    Returns ``{"deletion_auc": (N,), "insertion_auc": (N,), "curves": {"fraction": (steps+1,),
    "deletion": (N, steps+1), "insertion": (N, steps+1)}}``; AUCs are trapezoidal over the fraction
    removed/inserted in [0, 1], curves are the probability of ``target``. Lower deletion and higher
    insertion AUC mean a more faithful map.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x, flat, t = _inputs(x, heatmaps, target)
    n, s1, s2, c = x.shape
    base = _baseline(x, baseline, blur_sigma)
    ranks = _ranks(flat).reshape(n, s1, s2, 1)
    fraction = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fraction * s1 * s2).astype(np.int64)
    per_image = 2 * (steps + 1)  # deletion frames, then insertion frames

    def make(ids: np.ndarray) -> np.ndarray:
        img, rest = np.divmod(ids, per_image)
        insert, step = np.divmod(rest, steps + 1)
        chosen = ranks[img] < counts[step][:, None, None, None]
        keep_x = np.where(insert[:, None, None, None] == 1, chosen, ~chosen)
        return np.where(keep_x, x[img], base[img])

    prob, _ = _predict_stream(predict_fn, make, n * per_image, np.repeat(t, per_image), batch_size)
    prob = prob.reshape(n, 2, steps + 1)
    return {
        "deletion_auc": trapezoid(prob[:, 0], fraction, axis=1),
        "insertion_auc": trapezoid(prob[:, 1], fraction, axis=1),
        "curves": {"fraction": fraction, "deletion": prob[:, 0], "insertion": prob[:, 1]},
    }


# ---------------------------------------------------------------------------------------------- ROAD
def noisy_linear_imputation(image: np.ndarray, removed: np.ndarray, noise_std: float = 0.0,
                            rng: np.random.Generator | None = None) -> np.ndarray:
    """Fill the ``removed`` pixels of ``image`` (H, W, C) from their neighbours (Rong et al. 2022).

    Each removed pixel is set to the weighted mean of its 8 neighbours (weight 1/6 edge, 1/12 diagonal;
    neighbours outside the image are dropped), which couples all removed pixels into one sparse linear
    system (a discrete Laplace equation with the kept pixels as boundary). Gaussian noise with
    ``noise_std`` is then added to the imputed pixels. Every connected region of removed pixels must touch
    a kept pixel, so not all pixels can be removed.
    """
    h, w, c = image.shape
    flat = image.reshape(h * w, c).astype(np.float64)
    idx = np.flatnonzero(removed.ravel())
    if len(idx) == 0:
        return image.copy()
    if len(idx) == h * w:
        raise ValueError("cannot impute an image with every pixel removed")
    var = np.full(h * w, -1)
    var[idx] = np.arange(len(idx))
    ys, xs = np.divmod(idx, w)
    rows, cols, vals = [], [], []
    diag = np.zeros(len(idx))
    b = np.zeros((len(idx), c))
    for (dy, dx), weight in _NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        ok = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        nb = ny[ok] * w + nx[ok]
        eq = np.flatnonzero(ok)
        diag[eq] += weight
        unknown = var[nb] >= 0
        rows.append(eq[unknown])
        cols.append(var[nb[unknown]])
        vals.append(np.full(unknown.sum(), weight))
        b[eq[~unknown]] -= weight * flat[nb[~unknown]]
    a = sparse.coo_matrix((np.concatenate(vals + [-diag]),
                           (np.concatenate(rows + [np.arange(len(idx))]),
                            np.concatenate(cols + [np.arange(len(idx))]))),
                          shape=(len(idx), len(idx))).tocsc()
    solution = spsolve(a, b).reshape(len(idx), c)
    if noise_std > 0:
        solution = solution + (rng or np.random.default_rng()).normal(0.0, noise_std, solution.shape)
    out = flat.copy()
    out[idx] = solution
    return out.reshape(h, w, c).astype(image.dtype)


def road(predict_fn: PredictFn, x: Any, heatmaps: Any, target: int | Sequence[int],
         percentages: Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90), order: str = "morf",
         noise: float = 0.01, seed: int = 0, batch_size: int = 64) -> dict[str, Any]:
    """ROAD, RemOve And Debias (Rong et al. 2022): the model's output as ever more pixels are imputed.

    For each percentage p, the first ``floor(p / 100 * S*S)`` pixels in the heatmap's order are replaced
    by :func:`noisy_linear_imputation`. ``order="morf"`` removes the most relevant first (a faithful map
    makes accuracy fall fast), ``"lerf"`` the least relevant first (accuracy should hold); Rong et al.
    recommend reading both. ``noise`` is the noise std as a fraction of x's value range (max - min
    over the batch), so 0.01 matches the paper's 0.01 on unit-range images; 0 makes ROAD deterministic.

    Returns ``{"percentages": (P,), "probability": (N, P) probability of target, "correct": (N, P) bool
    argmax == target, "accuracy": (P,) mean of correct}``; ``correct``/``accuracy`` are what Quantus'
    ``ROAD`` reports for ``order="morf"``, with ``target`` as its ``y_batch``.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    pct = np.asarray(percentages, dtype=np.float64)
    if pct.ndim != 1 or np.any(pct < 0) or np.any(pct >= 100):
        raise ValueError(f"percentages must be a sequence of values in [0, 100); got {percentages}")
    x, flat, t = _inputs(x, heatmaps, target)
    n, s1, s2, _ = x.shape
    ranks = _ranks(flat, descending=order == "morf").reshape(n, s1, s2)
    counts = np.floor(pct / 100 * s1 * s2 + 1e-9).astype(np.int64)
    noise_std = noise * float(x.max() - x.min())
    rng = np.random.default_rng(seed)

    def make(ids: np.ndarray) -> np.ndarray:
        img, step = np.divmod(ids, len(pct))
        return np.stack([noisy_linear_imputation(x[i], ranks[i] < counts[k], noise_std, rng)
                         for i, k in zip(img, step)])

    prob, correct = _predict_stream(predict_fn, make, n * len(pct), np.repeat(t, len(pct)), batch_size)
    correct = correct.reshape(n, len(pct))
    return {"percentages": pct, "probability": prob.reshape(n, len(pct)), "correct": correct,
            "accuracy": correct.mean(axis=0)}


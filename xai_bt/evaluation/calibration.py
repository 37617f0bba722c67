"""Calibration: how far predicted probabilities can be trusted, and temperature scaling to repair them.

Definitions follow Guo et al. 2017 ("On Calibration of Modern Neural Networks"): confidence is the
maximum probability, binned into ``n_bins`` equal-width bins ``((m-1)/M, m/M]``; ECE is the
count-weighted mean |accuracy - confidence| over bins, MCE the largest gap. Classwise ECE (Kull et al.
2019) averages the one-vs-rest ECE of every class. Same ``(y_true, y_prob)`` convention as
:mod:`xai_bt.evaluation.metrics`.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax, softmax

from xai_bt.evaluation.metrics import check_inputs

_EPS = 1e-12  # floor for probabilities before taking logs
T_BOUNDS = (0.05, 20.0)  #: search interval of the temperature


def _bin_sums(score: np.ndarray, hit: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bin edges, and per bin: count, sum of scores, sum of hits (bins are (lo, hi], 0 joins the first)."""
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], score, side="left")
    count = np.bincount(idx, minlength=n_bins)
    return (edges, count, np.bincount(idx, weights=score, minlength=n_bins),
            np.bincount(idx, weights=hit.astype(np.float64), minlength=n_bins))


def _scores_hits(y: np.ndarray, p: np.ndarray, class_index: int | None) -> tuple[np.ndarray, np.ndarray]:
    """What is binned: max confidence and correctness, or P(class) and whether it is that class."""
    if class_index is None:
        return p.max(axis=1), p.argmax(axis=1) == y
    if not 0 <= class_index < p.shape[1]:
        raise ValueError(f"class_index {class_index} out of range for {p.shape[1]} classes")
    return p[:, class_index], y == class_index


def _ece_mce(score: np.ndarray, hit: np.ndarray, n_bins: int) -> tuple[float, float]:
    _, count, sum_score, sum_hit = _bin_sums(score, hit, n_bins)
    gaps = np.abs(sum_hit - sum_score)
    return float(gaps.sum() / len(score)), float(np.max(gaps[count > 0] / count[count > 0]))


def ece(y_true: Any, y_prob: Any, n_bins: int = 15) -> float:
    """Expected calibration error on the max-probability confidence (Guo et al. 2017)."""
    y, p = check_inputs(y_true, y_prob)
    return _ece_mce(*_scores_hits(y, p, None), n_bins)[0]


def mce(y_true: Any, y_prob: Any, n_bins: int = 15) -> float:
    """Maximum calibration error: the worst gap over non-empty confidence bins."""
    y, p = check_inputs(y_true, y_prob)
    return _ece_mce(*_scores_hits(y, p, None), n_bins)[1]


def classwise_ece_per_class(y_true: Any, y_prob: Any, n_bins: int = 15) -> list[float]:
    """One-vs-rest ECE of each class: P(class c) against the frequency of class c, per bin."""
    y, p = check_inputs(y_true, y_prob)
    return [_ece_mce(*_scores_hits(y, p, c), n_bins)[0] for c in range(p.shape[1])]


def classwise_ece(y_true: Any, y_prob: Any, n_bins: int = 15) -> float:
    """Classwise ECE (Kull et al. 2019): mean of the per-class one-vs-rest ECEs."""
    return float(np.mean(classwise_ece_per_class(y_true, y_prob, n_bins)))


def brier_score(y_true: Any, y_prob: Any) -> float:
    """Multiclass Brier score: mean over samples of sum_k (p_k - 1[y = k])^2, in [0, 2]."""
    y, p = check_inputs(y_true, y_prob)
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def nll(y_true: Any, y_prob: Any) -> float:
    """Negative log-likelihood (log loss) of the true class, probabilities floored at 1e-12."""
    y, p = check_inputs(y_true, y_prob)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], _EPS))))


def reliability_bins(
    y_true: Any, y_prob: Any, n_bins: int = 15, class_index: int | None = None
) -> dict[str, Any]:
    """Per-bin mean confidence, accuracy and count: the data of a reliability diagram.

    ``class_index=None`` bins the max-probability confidence against correctness; an integer bins
    P(class) against the observed frequency of that class (one-vs-rest). Empty bins hold None.
    Returns ``{"edges", "confidence", "accuracy", "count", "ece", "class_index"}`` (lists, JSON-safe).
    """
    y, p = check_inputs(y_true, y_prob)
    score, hit = _scores_hits(y, p, class_index)
    edges, count, sum_score, sum_hit = _bin_sums(score, hit, n_bins)
    return {
        "edges": edges.tolist(),
        "confidence": [float(s / c) if c else None for s, c in zip(sum_score, count)],
        "accuracy": [float(h / c) if c else None for h, c in zip(sum_hit, count)],
        "count": count.tolist(),
        "ece": _ece_mce(score, hit, n_bins)[0],
        "class_index": class_index,
    }


# --------------------------------------------------------------------------------------------- temperature
def _nll_logits(logits: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(log_softmax(logits, axis=1)[np.arange(len(y)), y]))


def search_temperature(nll_at: Callable[[float], float], bounds: tuple[float, float] = T_BOUNDS) -> float:
    """The one temperature search: T > 0 minimising ``nll_at(T)`` by a bounded Brent search on log T (NLL is
    unimodal in T); warns if the optimum sits on a bound. Any model whose probabilities depend on one T
    (a softmax of logits, a cascade of two) is fitted through it."""
    lo, hi = np.log(bounds)
    res = minimize_scalar(lambda log_t: nll_at(float(np.exp(log_t))), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-6})
    if min(res.x - lo, hi - res.x) < 1e-3:
        warnings.warn(f"temperature hit its search bound ({np.exp(res.x):.3g} in {bounds}); check the model and "
                      "data", stacklevel=2)
    return float(np.exp(res.x))


def fit_temperature(logits: Any, y_true: Any, bounds: tuple[float, float] = T_BOUNDS) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T) (Guo et al. 2017).

    Fit it on a validation split, never the test split. T > 1 softens an over-confident model;
    argmax, hence accuracy, is unchanged.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    if z.ndim != 2 or len(z) != len(y):
        raise ValueError(f"logits must be (n, k) with n = len(y_true); got {z.shape} and {len(y)} labels")
    return search_temperature(lambda t: _nll_logits(z / t, y), bounds)


def _balanced_nll(z: np.ndarray, y: np.ndarray) -> float:
    ll = -log_softmax(z, axis=1)[np.arange(len(y)), y]
    return float(np.mean([ll[y == c].mean() for c in np.unique(y)]))


def fit_temperature_and_bias(logits: Any, y_true: Any, bounds: tuple[float, float] = T_BOUNDS
                             ) -> tuple[float, np.ndarray]:
    """(T, b): softmax(logits / T + b) minimising the class-balanced NLL, b[-1] = 0 (bias-corrected
    temperature scaling, Alexandari et al. 2020). Each class present weighs the same, so b corrects the
    model's systematic leaning towards a class rather than learning the fitting set's class mix.
    Unlike T alone, b can change the argmax; fit it on validation scans, never the test split."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    if z.ndim != 2 or len(z) != len(y):
        raise ValueError(f"logits must be (n, k) with n = len(y_true); got {z.shape} and {len(y)} labels")
    k = z.shape[1]
    if len(np.unique(y)) < k:
        raise ValueError(f"class biases need scans of all {k} classes; got {len(np.unique(y))}")
    lo, hi = np.log(bounds)

    def objective(params: np.ndarray) -> float:
        return _balanced_nll(z / np.exp(params[0]) + np.r_[params[1:], 0.0], y)

    res = minimize(objective, np.zeros(k), method="L-BFGS-B", bounds=[(lo, hi)] + [(-10.0, 10.0)] * (k - 1))
    return float(np.exp(res.x[0])), np.r_[res.x[1:], 0.0]


def cross_validated_bias_gain(logits: Any, y_true: Any, folds: int = 5, seed: int = 0) -> dict[str, float]:
    """Held-out (k-fold, stratified) class-balanced NLL of temperature alone and of temperature + class
    biases: whether the biases generalise across the validation scans, or only fit them."""
    from sklearn.model_selection import StratifiedKFold

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    folds = min(folds, int(np.bincount(y).min()))   # every class in every fold's fitting part and held part
    if folds < 2:
        raise ValueError("too few scans of some class to cross-validate class biases")
    t_only, with_bias = [], []
    for fit_idx, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(z, y):
        t = fit_temperature(z[fit_idx], y[fit_idx])
        tb, b = fit_temperature_and_bias(z[fit_idx], y[fit_idx])
        t_only.append(_balanced_nll(z[held] / t, y[held]) * len(held))
        with_bias.append(_balanced_nll(z[held] / tb + b, y[held]) * len(held))
    return {"folds": folds, "temperature": float(sum(t_only) / len(y)),
            "temperature_and_bias": float(sum(with_bias) / len(y))}


def fit_temperature_from_probs(probs: Any, y_true: Any, bounds: tuple[float, float] = T_BOUNDS) -> float:
    """:func:`fit_temperature` when only probabilities were saved: log-probabilities serve as logits.

    Softmax is shift-invariant per row, so log p = logits - logsumexp(logits) gives the same T.
    Apply it with ``apply_temperature(np.log(probs), T)``.
    """
    return fit_temperature(np.log(np.maximum(np.asarray(probs, dtype=np.float64), _EPS)), y_true, bounds)


def apply_temperature(logits_or_logprobs: Any, temperature: float) -> np.ndarray:
    """Calibrated probabilities softmax(logits / T)."""
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    return softmax(np.asarray(logits_or_logprobs, dtype=np.float64) / temperature, axis=1)


# --------------------------------------------------------------------------------------------- report
def calibration_report(y_true: Any, y_prob: Any, n_bins: int = 15) -> dict[str, Any]:
    """All calibration numbers for one set of predictions, JSON-serialisable.

    ``overconfidence`` is mean confidence minus accuracy (> 0: the model claims more than it delivers).
    """
    y, p = check_inputs(y_true, y_prob)
    score, hit = _scores_hits(y, p, None)
    ece_value, mce_value = _ece_mce(score, hit, n_bins)
    per_class = classwise_ece_per_class(y, p, n_bins)
    return {
        "n": int(len(y)),
        "n_bins": n_bins,
        "accuracy": float(hit.mean()),
        "mean_confidence": float(score.mean()),
        "overconfidence": float(score.mean() - hit.mean()),
        "ece": ece_value,
        "mce": mce_value,
        "classwise_ece": float(np.mean(per_class)),
        "classwise_ece_per_class": per_class,
        "brier": brier_score(y, p),
        "nll": nll(y, p),
    }

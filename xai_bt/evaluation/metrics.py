"""Classification metrics with confidence intervals, and the curves and bins that figures draw.

Plain functions in scikit-learn's argument order, ``(y_true, y_prob, ...)``: ``y_true`` holds integer
class indices, shape (n,); ``y_prob`` holds probabilities, shape (n, k). Every returned dict is
JSON-serialisable (floats, ints, lists, ``None`` for a value that is undefined, e.g. the AUC of a class
absent from ``y_true``). Plotting lives in :mod:`xai_bt.plots.evaluation`, tables in
:mod:`xai_bt.evaluation.tables`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import norm
from sklearn.metrics import (
    auc,
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

MetricFn = Callable[[np.ndarray, np.ndarray], float]

#: Per-class quantities reported by :func:`classification_report_dict`, in table order.
PER_CLASS_KEYS = ("precision", "recall", "specificity", "f1", "auc", "average_precision", "support")

_BOOT_CHUNK = 200  # bootstrap replicates evaluated at once by the vectorised AUC (bounds memory)


# --------------------------------------------------------------------------------------------- inputs
def check_inputs(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``(y_true, y_prob)``; raise ValueError naming the problem.

    Rows of ``y_prob`` must sum to 1: passing logits by mistake is the commonest silent error.
    """
    y = np.asarray(y_true)
    p = np.asarray(y_prob, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"y_prob must be 2-D (n, k); got shape {p.shape}")
    if y.ndim != 1 or len(y) != len(p):
        raise ValueError(f"y_true must be 1-D with {len(p)} entries; got shape {y.shape}")
    if len(y) == 0:
        raise ValueError("no samples")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("y_true must hold integer class indices")
        y = y.astype(np.int64)
    k = p.shape[1]
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true must lie in [0, {k - 1}] for {k} probability columns")
    if not np.all(np.isfinite(p)) or p.min() < 0:
        raise ValueError("y_prob must be finite and non-negative")
    sums = p.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-3):
        worst = float(sums[np.argmax(np.abs(sums - 1))])
        raise ValueError(f"rows of y_prob must sum to 1 (one sums to {worst:.4g}); pass probabilities, not logits")
    return y.astype(np.int64), p


def _names(class_names: Sequence[str] | None, k: int) -> list[str]:
    """Class names as strings, defaulting to "0", "1", ..."""
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} probability columns")
    return names


def _float(x: Any) -> float | None:
    """A JSON-safe float: NaN and infinities become None."""
    x = float(x)
    return x if np.isfinite(x) else None


def _floats(a: Any) -> list[float | None]:
    """A JSON-safe list of floats."""
    return [_float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def _one_hot(y: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k, dtype=np.int64)[y]


def _binary_or_none(fn: Callable[..., float], truth: np.ndarray, score: np.ndarray) -> float | None:
    """``fn(truth, score)`` for a binary problem, or None when a class is missing and it is undefined."""
    if truth.min() == truth.max():
        return None
    return _float(fn(truth, score))


def _mean_or_none(values: Sequence[float | None], weights: Sequence[float] | None = None) -> float | None:
    """(Weighted) mean, or None if any value is undefined: a silent partial average would mislead."""
    if any(v is None for v in values):
        return None
    return _float(np.average(np.asarray(values, dtype=np.float64), weights=weights))


# --------------------------------------------------------------------------------------------- report
def classification_report_dict(
    y_true: Any, y_prob: Any, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Everything a results table needs from one set of predictions (prediction = argmax of y_prob).

    Per class: precision, recall (sensitivity), specificity, F1, one-vs-rest ROC-AUC, average precision,
    support. Averages: macro, support-weighted and micro (micro P = R = F1 = accuracy for single-label
    problems; micro AUC/AP pool all one-vs-rest decisions). Confusion matrix rows are true classes.
    """
    y, p = check_inputs(y_true, y_prob)
    n, k = p.shape
    names = _names(class_names, k)
    y_pred = p.argmax(axis=1)
    onehot = _one_hot(y, k)

    cm = confusion_matrix(y, y_pred, labels=np.arange(k))
    prec, rec, f1, support = precision_recall_fscore_support(
        y, y_pred, labels=np.arange(k), zero_division=0
    )
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = n - tp - fp - fn
    spec = np.divide(tn, tn + fp, out=np.full(k, np.nan), where=(tn + fp) > 0)
    aucs = [_binary_or_none(roc_auc_score, onehot[:, c], p[:, c]) for c in range(k)]
    aps = [_binary_or_none(average_precision_score, onehot[:, c], p[:, c]) for c in range(k)]

    per_class = {
        name: {
            "precision": _float(prec[c]), "recall": _float(rec[c]), "specificity": _float(spec[c]),
            "f1": _float(f1[c]), "auc": aucs[c], "average_precision": aps[c], "support": int(support[c]),
        }
        for c, name in enumerate(names)
    }
    accuracy = float(np.mean(y_pred == y))
    averages = {
        "macro": {key: _mean_or_none([per_class[m][key] for m in names]) for key in PER_CLASS_KEYS[:-1]},
        "weighted": {
            key: _mean_or_none([per_class[m][key] for m in names], weights=support)
            for key in PER_CLASS_KEYS[:-1]
        },
        "micro": {
            "precision": accuracy, "recall": accuracy, "specificity": _float(tn.sum() / (tn.sum() + fp.sum())),
            "f1": accuracy, "auc": _binary_or_none(roc_auc_score, onehot.ravel(), p.ravel()),
            "average_precision": _binary_or_none(average_precision_score, onehot.ravel(), p.ravel()),
        },
    }
    for avg in averages.values():
        avg["support"] = n
    row_sums = cm.sum(axis=1, keepdims=True)
    return {
        "n": n,
        "class_names": names,
        "accuracy": accuracy,
        "macro_f1": averages["macro"]["f1"],
        "weighted_f1": averages["weighted"]["f1"],
        "macro_auc": averages["macro"]["auc"],
        "micro_auc": averages["micro"]["auc"],
        "per_class": per_class,
        "averages": averages,
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalised": (cm / np.maximum(row_sums, 1)).tolist(),
    }


# --------------------------------------------------------------------------------------------- curves
def _macro_curve(xs: list[np.ndarray], ys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Average several curves y(x) on the union of their x values (linear interpolation)."""
    grid = np.unique(np.concatenate(xs))
    return grid, np.mean([np.interp(grid, x, y) for x, y in zip(xs, ys)], axis=0)


def roc_curves(
    y_true: Any, y_prob: Any, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """One-vs-rest ROC curves: ``{"per_class": {name: curve}, "micro": curve, "macro": curve}``.

    A curve is ``{"fpr", "tpr", "auc"}`` (per-class curves also carry ``thresholds``, the first, +inf in
    scikit-learn, as None, and ``n_positive``, the class's scans). The macro curve averages per-class TPR on
    the union of their FPRs.
    """
    y, p = check_inputs(y_true, y_prob)
    k = p.shape[1]
    onehot = _one_hot(y, k)
    per_class, fprs, tprs = {}, [], []
    for c, name in enumerate(_names(class_names, k)):
        if onehot[:, c].min() == onehot[:, c].max():
            continue  # undefined for a class absent from (or the only class in) y_true
        fpr, tpr, thr = roc_curve(onehot[:, c], p[:, c])
        per_class[name] = {"fpr": _floats(fpr), "tpr": _floats(tpr), "thresholds": _floats(thr),
                           "auc": _float(auc(fpr, tpr)), "n_positive": int(onehot[:, c].sum())}
        fprs.append(fpr)
        tprs.append(tpr)
    fpr, tpr, _ = roc_curve(onehot.ravel(), p.ravel())
    mfpr, mtpr = _macro_curve(fprs, tprs)
    return {
        "per_class": per_class,
        "micro": {"fpr": _floats(fpr), "tpr": _floats(tpr), "auc": _float(auc(fpr, tpr))},
        "macro": {"fpr": _floats(mfpr), "tpr": _floats(mtpr), "auc": _float(auc(mfpr, mtpr))},
    }


def macro_pr_curve(curves: Sequence[tuple[Sequence[float], Sequence[float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Macro-average of precision-recall step curves ``[(recall, precision), ...]`` (scikit-learn's order,
    recall falling): the mean precision on the union of their recalls, recall falling.

    Each curve is the step function that average precision integrates (precision ``p[i]`` on recalls
    ``(r[i + 1], r[i]]``), so the area under the macro curve is exactly the mean of the per-class APs: the
    curve the macro AP summarises, as the macro ROC curve is the one macro AUC summarises.
    """
    if not curves:
        raise ValueError("no curves to average")
    grid = np.unique(np.concatenate([np.asarray(r, dtype=np.float64) for r, _ in curves]))[::-1]
    total = np.zeros(len(grid))
    for recall, precision in curves:
        ascending = np.asarray(recall, dtype=np.float64)[::-1]
        # index (recall falling) of the last point whose recall is >= each grid value
        last = len(ascending) - np.searchsorted(ascending, grid, side="left") - 1
        total += np.asarray(precision, dtype=np.float64)[last]
    return grid, total / len(curves)


def step_area(recall: Sequence[float], precision: Sequence[float]) -> float:
    """Area under a precision-recall step curve in scikit-learn's order: sum of (r[i] - r[i + 1]) p[i], which
    is average precision for a per-class curve and the macro AP for :func:`macro_pr_curve`."""
    r, p = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    return float(-np.sum(np.diff(r) * p[:-1]))


def pr_curves(
    y_true: Any, y_prob: Any, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """One-vs-rest precision-recall curves, shaped like :func:`roc_curves`.

    A curve is ``{"recall", "precision", "average_precision"}``; per-class curves add ``prevalence`` (the
    precision of a random classifier, the chance line) and ``n_positive``. ``macro`` is
    :func:`macro_pr_curve` of the per-class curves, its ``average_precision`` the mean of per-class AP (as
    macro AUC is the mean of per-class AUC); ``micro`` pools every one-vs-rest decision.
    """
    y, p = check_inputs(y_true, y_prob)
    k = p.shape[1]
    onehot = _one_hot(y, k)
    per_class, aps, steps = {}, [], []
    for c, name in enumerate(_names(class_names, k)):
        if onehot[:, c].max() == 0:
            continue  # no positives: precision-recall is undefined
        prec, rec, _ = precision_recall_curve(onehot[:, c], p[:, c])
        ap = float(average_precision_score(onehot[:, c], p[:, c]))
        per_class[name] = {"recall": _floats(rec), "precision": _floats(prec), "average_precision": ap,
                           "prevalence": float(onehot[:, c].mean()), "n_positive": int(onehot[:, c].sum())}
        aps.append(ap)
        steps.append((rec, prec))
    prec, rec, _ = precision_recall_curve(onehot.ravel(), p.ravel())
    macro_rec, macro_prec = macro_pr_curve(steps)
    return {
        "per_class": per_class,
        "micro": {"recall": _floats(rec), "precision": _floats(prec),
                  "average_precision": float(average_precision_score(onehot.ravel(), p.ravel()))},
        "macro": {"recall": _floats(macro_rec), "precision": _floats(macro_prec),
                  "average_precision": _float(np.mean(aps))},
    }


# --------------------------------------------------------------------------------------------- bootstrap
def _bootstrap_indices(y: np.ndarray, n_boot: int, seed: int, stratified: bool) -> np.ndarray:
    """(n_boot, n) resample indices; stratified keeps each class's count, so every class is present."""
    rng = np.random.default_rng(seed)
    n = len(y)
    if not stratified:
        return rng.integers(0, n, size=(n_boot, n))
    idx = np.empty((n_boot, n), dtype=np.int64)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        idx[:, members] = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
    return idx


def percentile_interval(boots: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """The (alpha/2, 1 - alpha/2) percentile interval of bootstrap replicates: every CI of the project
    (metrics here, the audit's localisation scores) ends in this one step. NaN replicates are dropped."""
    valid = np.asarray(boots, dtype=np.float64)
    valid = valid[np.isfinite(valid)]
    if not len(valid):
        return np.nan, np.nan
    low, high = np.percentile(valid, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def bootstrap_mean_ci(values: Any, n_boot: int = 1000, alpha: float = 0.05,
                      rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Mean of the finite values with a percentile-bootstrap CI: {"mean", "low", "high", "n", "n_valid"}.
    `rng` continues the caller's generator, so a summary of many groups and scores draws from one stream
    (the focus audit's summaries); by default a generator seeded 0."""
    values = np.asarray(values, dtype=np.float64)
    v = values[np.isfinite(values)]
    out: dict[str, Any] = {"mean": None, "low": None, "high": None, "n": int(len(values)), "n_valid": int(len(v))}
    if len(v) == 0:
        return out
    rng = np.random.default_rng(0) if rng is None else rng
    low, high = percentile_interval(v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1), alpha)
    out.update(mean=float(v.mean()), low=low, high=high)
    return out


def _percentile_ci(estimate: float | None, boots: np.ndarray, alpha: float, stratified: bool) -> dict[str, Any]:
    """Percentile interval of bootstrap replicates (undefined replicates, NaN, are dropped and counted)."""
    valid = boots[np.isfinite(boots)]
    low, high = percentile_interval(boots, alpha)
    return {"estimate": estimate, "low": _float(low), "high": _float(high), "alpha": alpha,
            "n_boot": int(len(boots)), "n_valid": int(len(valid)),
            "method": "stratified percentile bootstrap" if stratified else "percentile bootstrap"}


def _replicates(stat: Callable[[np.ndarray], float], y: np.ndarray, n_boot: int, seed: int,
                stratified: bool) -> np.ndarray:
    """`stat(indices)` on each bootstrap resample; NaN where it raises ValueError (an undefined metric)."""
    boots = np.empty(n_boot)
    for i, idx in enumerate(_bootstrap_indices(y, n_boot, seed, stratified)):
        try:
            boots[i] = stat(idx)
        except ValueError:
            boots[i] = np.nan
    return boots


def bootstrap_ci(
    metric_fn: MetricFn,
    y_true: Any,
    y_prob: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    stratified: bool = True,
) -> dict[str, Any]:
    """Percentile bootstrap CI of any ``metric_fn(y_true, y_prob) -> float``.

    Returns ``{"estimate", "low", "high", "alpha", "n_boot", "n_valid", "method"}``. Stratified resampling
    (within each true class) keeps class counts fixed, so per-class metrics stay defined. Replicates that
    raise ValueError (e.g. an undefined metric) are dropped and show up as ``n_valid < n_boot``. For AUC use
    :func:`auc_with_ci`, which uses the same resamples but is vectorised.
    """
    y, p = check_inputs(y_true, y_prob)
    boots = _replicates(lambda idx: metric_fn(y[idx], p[idx]), y, n_boot, seed, stratified)
    return _percentile_ci(_float(metric_fn(y, p)), boots, alpha, stratified)


def bootstrap_difference(
    metric_fn: MetricFn,
    y_true: Any,
    y_prob_a: Any,
    y_prob_b: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    stratified: bool = True,
) -> dict[str, Any]:
    """Paired percentile bootstrap CI of ``metric_fn(y, b) - metric_fn(y, a)`` on the same samples.

    Both probability sets are evaluated on each resample (e.g. before and after temperature scaling), so
    the interval reflects the change, not the two sampling errors. Same return shape as
    :func:`bootstrap_ci` (``estimate`` is the observed difference).
    """
    return bootstrap_paired(metric_fn, y_true, y_prob_a, y_prob_b, n_boot, alpha, seed, stratified)["change"]


def bootstrap_paired(
    metric_fn: MetricFn,
    y_true: Any,
    y_prob_a: Any,
    y_prob_b: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    stratified: bool = True,
) -> dict[str, dict[str, Any]]:
    """``{"a", "b", "change"}``: :func:`bootstrap_ci` of each probability set and
    :func:`bootstrap_difference` (b - a), all three from one evaluation of the metric per resample.

    Equal, number for number, to the three separate calls with the same arguments, at half their cost
    (the separate calls evaluate every resample twice per set).
    """
    y, a = check_inputs(y_true, y_prob_a)
    _, b = check_inputs(y_true, y_prob_b)
    if a.shape != b.shape:
        raise ValueError(f"probability sets differ in shape: {a.shape} vs {b.shape}")
    boots_a = _replicates(lambda idx: metric_fn(y[idx], a[idx]), y, n_boot, seed, stratified)
    boots_b = _replicates(lambda idx: metric_fn(y[idx], b[idx]), y, n_boot, seed, stratified)
    est_a, est_b = metric_fn(y, a), metric_fn(y, b)
    return {"a": _percentile_ci(_float(est_a), boots_a, alpha, stratified),
            "b": _percentile_ci(_float(est_b), boots_b, alpha, stratified),
            "change": _percentile_ci(_float(est_b - est_a), boots_b - boots_a, alpha, stratified)}


def _weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC-AUC of one binary problem under each row of sample weights (B, n) -> (B,).

    Mann-Whitney form, P(s_pos > s_neg) + P(tie) / 2, which equals scikit-learn's trapezoidal AUC; a
    bootstrap resample is the original sample weighted by how often each item was drawn.
    """
    order = np.argsort(scores, kind="mergesort")
    s, pos, w = scores[order], positive[order].astype(bool), weights[:, order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # groups of tied scores
    wp = np.add.reduceat(np.where(pos, w, 0.0), starts, axis=1)
    wn = np.add.reduceat(np.where(pos, 0.0, w), starts, axis=1)
    neg_below = np.cumsum(wn, axis=1) - wn
    num = np.sum(wp * (neg_below + 0.5 * wn), axis=1)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    return np.divide(num, den, out=np.full(len(w), np.nan), where=den > 0)


def _bootstrap_counts(y: np.ndarray, n_boot: int, seed: int, stratified: bool):
    """(first replicate, counts (chunk, n)): how often each item is drawn in each bootstrap replicate,
    `_BOOT_CHUNK` replicates at a time, so a metric computed under sample weights needs no resampling."""
    idx = _bootstrap_indices(y, n_boot, seed, stratified)
    for start in range(0, n_boot, _BOOT_CHUNK):
        rows = idx[start:start + _BOOT_CHUNK]
        yield start, np.bincount((rows + len(y) * np.arange(len(rows))[:, None]).ravel(),
                                 minlength=len(rows) * len(y)).reshape(len(rows), len(y))


def _cumulative_counts(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Weighted true and false positives (B, thresholds) at each distinct score, highest first (tied
    scores are one threshold): the ROC and PR curves of each row of sample weights."""
    order = np.argsort(-scores, kind="mergesort")
    s, pos, w = scores[order], positive[order].astype(bool), weights[:, order].astype(np.float64)
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # last item of each group of tied scores
    return np.cumsum(np.where(pos, w, 0.0), axis=1)[:, ends], np.cumsum(np.where(pos, 0.0, w), axis=1)[:, ends]


def auc_with_ci(
    y_true: Any,
    y_prob: Any,
    class_names: Sequence[str] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    stratified: bool = True,
) -> dict[str, Any]:
    """One-vs-rest ROC-AUC per class, macro and micro, each with a percentile bootstrap CI.

    Returns ``{"per_class": {name: ci}, "macro": ci, "micro": ci}`` with ``ci`` as in
    :func:`bootstrap_ci`, from the very same resamples (same seed → same intervals), but vectorised:
    1000 replicates of 1,311 x 4 take well under a second.
    """
    y, p = check_inputs(y_true, y_prob)
    k = p.shape[1]
    names = _names(class_names, k)
    onehot = _one_hot(y, k)
    per_class_boots = np.empty((n_boot, k))
    micro_boots = np.empty(n_boot)
    for start, counts in _bootstrap_counts(y, n_boot, seed, stratified):
        for c in range(k):
            per_class_boots[start:start + len(counts), c] = _weighted_auc(p[:, c], onehot[:, c], counts)
        micro_boots[start:start + len(counts)] = _weighted_auc(p.ravel(), onehot.ravel(),
                                                               np.repeat(counts, k, axis=1))
    ones = np.ones((1, len(y)))
    estimates = [_float(_weighted_auc(p[:, c], onehot[:, c], ones)[0]) for c in range(k)]
    return {
        "per_class": {name: _percentile_ci(estimates[c], per_class_boots[:, c], alpha, stratified)
                      for c, name in enumerate(names)},
        "macro": _percentile_ci(_mean_or_none(estimates), per_class_boots.mean(axis=1), alpha, stratified),
        "micro": _percentile_ci(_float(_weighted_auc(p.ravel(), onehot.ravel(), np.ones((1, p.size)))[0]),
                                micro_boots, alpha, stratified),
    }


def _weighted_ap(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision of one binary problem under each row of sample weights (B, n) -> (B,).

    scikit-learn's definition, sum over thresholds of (R_i - R_{i-1}) P_i with tied scores as one threshold;
    a bootstrap resample is the original sample weighted by how often each item was drawn. NaN for a
    replicate without positives.
    """
    tp, fp = _cumulative_counts(scores, positive, weights)
    precision = np.divide(tp, tp + fp, out=np.ones_like(tp), where=(tp + fp) > 0)
    n_pos = tp[:, -1:]
    recall_step = np.diff(np.concatenate([np.zeros((len(weights), 1)), tp], axis=1), axis=1)
    num = np.sum(recall_step * precision, axis=1)
    return np.divide(num, n_pos[:, 0], out=np.full(len(weights), np.nan), where=n_pos[:, 0] > 0)


def average_precision_with_ci(
    y_true: Any,
    y_prob: Any,
    class_names: Sequence[str] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    stratified: bool = True,
) -> dict[str, Any]:
    """One-vs-rest average precision per class and its macro mean, each with a percentile bootstrap CI.

    ``{"per_class": {name: ci}, "macro": ci}`` as :func:`auc_with_ci` returns for AUC, from the very same
    resamples (same seed, same replicates); estimates equal scikit-learn's ``average_precision_score``.
    """
    y, p = check_inputs(y_true, y_prob)
    k = p.shape[1]
    names = _names(class_names, k)
    onehot = _one_hot(y, k)
    boots = np.empty((n_boot, k))
    for start, counts in _bootstrap_counts(y, n_boot, seed, stratified):
        for c in range(k):
            boots[start:start + len(counts), c] = _weighted_ap(p[:, c], onehot[:, c], counts)
    ones = np.ones((1, len(y)))
    estimates = [_float(_weighted_ap(p[:, c], onehot[:, c], ones)[0]) for c in range(k)]
    return {
        "per_class": {name: _percentile_ci(estimates[c], boots[:, c], alpha, stratified)
                      for c, name in enumerate(names)},
        "macro": _percentile_ci(_mean_or_none(estimates), boots.mean(axis=1), alpha, stratified),
    }


def _step_tpr(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """TPR at each false positive rate of ``grid`` under each row of sample weights (B, n) -> (B, len(grid)).

    The ROC curve as a step function: at FPR f, the highest TPR reachable with FPR <= f (thresholds run
    over the distinct scores, highest first). NaN for a replicate without positives or negatives.
    """
    tp, fp = _cumulative_counts(scores, positive, weights)
    out = np.full((len(weights), len(grid)), np.nan)
    for b in range(len(weights)):
        if tp[b, -1] <= 0 or fp[b, -1] <= 0:
            continue
        tpr = np.r_[0.0, tp[b] / tp[b, -1]]
        fpr = np.r_[0.0, fp[b] / fp[b, -1]]
        out[b] = tpr[np.searchsorted(fpr, grid, side="right") - 1]
    return out


def roc_bands(
    y_true: Any,
    y_prob: Any,
    class_names: Sequence[str] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    stratified: bool = True,
    n_grid: int = 101,
) -> dict[str, Any]:
    """Pointwise percentile bootstrap bands of each class's one-vs-rest ROC curve.

    Vertical averaging (Fawcett 2006): the true positive rate at fixed false positive rates ``fpr`` (a
    grid on [0, 1]), taken over the same resamples as :func:`auc_with_ci` (same seed, same replicates).
    Returns ``{"fpr", "alpha", "n_boot", "per_class": {name: {"tpr", "low", "high"}}}``, where ``tpr`` is
    the step ROC curve of the full sample on the grid. Classes absent from ``y_true`` are left out.
    """
    y, p = check_inputs(y_true, y_prob)
    k = p.shape[1]
    names = _names(class_names, k)
    onehot = _one_hot(y, k)
    grid = np.linspace(0.0, 1.0, n_grid)
    idx = _bootstrap_indices(y, n_boot, seed, stratified)
    present = [c for c in range(k) if onehot[:, c].min() != onehot[:, c].max()]
    boots = {c: np.empty((n_boot, n_grid)) for c in present}
    for start in range(0, n_boot, _BOOT_CHUNK):
        rows = idx[start:start + _BOOT_CHUNK]
        counts = np.bincount((rows + len(y) * np.arange(len(rows))[:, None]).ravel(),
                             minlength=len(rows) * len(y)).reshape(len(rows), len(y))
        for c in present:
            boots[c][start:start + len(rows)] = _step_tpr(p[:, c], onehot[:, c], counts, grid)
    per_class = {}
    ones = np.ones((1, len(y)))
    for c in present:
        low, high = np.nanpercentile(boots[c], [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
        per_class[names[c]] = {"tpr": _floats(_step_tpr(p[:, c], onehot[:, c], ones, grid)[0]),
                               "low": _floats(low), "high": _floats(high)}
    return {"fpr": grid.tolist(), "alpha": alpha, "n_boot": n_boot, "per_class": per_class}


def wilson_interval(successes: Any, n: Any, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion ``successes / n`` (elementwise on arrays): closed form, inside
    [0, 1] and sensible near 0 and 1 and for small n, where the normal interval is not. NaN where n = 0."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    z = float(norm.ppf(1 - alpha / 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        share = k / n
        centre = (share + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    empty = n <= 0  # clipped: rounding must not put the bound of 0 or n successes a hair outside [0, 1]
    return (np.where(empty, np.nan, np.clip(centre - half, 0.0, 1.0)),
            np.where(empty, np.nan, np.clip(centre + half, 0.0, 1.0)))


def accuracy_ci(y_true: Any, y_prob: Any, alpha: float = 0.05) -> dict[str, Any]:
    """Accuracy with a Wilson score interval (:func:`wilson_interval`; better than the normal one near 0 or 1)."""
    y, p = check_inputs(y_true, y_prob)
    n = len(y)
    correct = int(np.sum(p.argmax(axis=1) == y))
    low, high = wilson_interval(correct, n, alpha)
    return {"estimate": correct / n, "low": float(low), "high": float(high), "alpha": alpha,
            "n": n, "method": "wilson"}


def grouped_accuracy_ci(y_true: Any, y_prob: Any, groups: Any, alpha: float = 0.05, n_resamples: int = 2000,
                        seed: int = 0) -> dict[str, Any]:
    """Accuracy of test scans that come in twin groups (near-copies of each other, mirrored or not).

    Scans of one group are not independent, so the Wilson interval over scans is too narrow: this gives the
    number of groups, the accuracy with each group counted once (the mean of its scans' hits), and a
    percentile bootstrap CI of the scan accuracy that resamples whole groups (``scipy.stats.bootstrap``)."""
    from scipy.stats import bootstrap

    y, p = check_inputs(y_true, y_prob)
    g = np.asarray(groups)
    if g.shape != y.shape:
        raise ValueError(f"{len(g)} group ids for {len(y)} scans")
    ids, inverse = np.unique(g, return_inverse=True)
    hits = np.bincount(inverse, weights=(p.argmax(axis=1) == y).astype(float), minlength=len(ids))
    sizes = np.bincount(inverse, minlength=len(ids)).astype(float)
    estimate = float(hits.sum() / sizes.sum())
    if len(ids) > 1 and 0 < hits.sum() < sizes.sum():
        ci = bootstrap((hits, sizes), lambda h, s: h.sum() / s.sum(), paired=True, vectorized=False,
                       n_resamples=n_resamples, confidence_level=1 - alpha, method="percentile",
                       random_state=np.random.default_rng(seed)).confidence_interval
        low, high = float(ci.low), float(ci.high)
    else:  # every resample gives the same accuracy
        low = high = estimate
    return {"estimate": estimate, "low": low, "high": high, "alpha": alpha, "n": len(y), "n_groups": len(ids),
            "group_weighted_accuracy": float(np.mean(hits / sizes)), "method": "group bootstrap (percentile)",
            "n_resamples": n_resamples}


# --------------------------------------------------------------------------------------------- figure data
def roc_plot_data(
    y_true: Any,
    y_prob: Any,
    class_names: Sequence[str] | None = None,
    ci: bool = True,
    band: bool | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """What :func:`xai_bt.plots.evaluation.plot_roc` draws, from predictions: ``{"curves", "auc_ci",
    "bands"}`` (:func:`roc_curves`, :func:`auc_with_ci` if ``ci``, :func:`roc_bands` if ``band``, default
    as ``ci``; the two bootstraps use the same resamples). ``plot_roc(**roc_plot_data(y, p, names))``."""
    return {
        "curves": roc_curves(y_true, y_prob, class_names),
        "auc_ci": auc_with_ci(y_true, y_prob, class_names, n_boot=n_boot, seed=seed) if ci else None,
        "bands": roc_bands(y_true, y_prob, class_names, n_boot=n_boot, seed=seed)
        if (ci if band is None else band) else None,
    }


def with_bin_intervals(bins: dict[str, Any], alpha: float = 0.05) -> dict[str, Any]:
    """Reliability ``bins`` (:func:`xai_bt.evaluation.calibration.reliability_bins`) plus what a reviewer
    needs to judge each bar: ``hits`` (correct, or of the class, per bin), the Wilson ``1 - alpha`` interval
    of each bin's accuracy (``accuracy_low``/``accuracy_high``, None for an empty bin), ``n`` and, for a
    one-vs-rest diagram, ``n_positive`` (scans of the class)."""
    count = np.asarray(bins["count"], dtype=np.int64)
    acc = np.array([0.0 if a is None else a for a in bins["accuracy"]], dtype=np.float64)
    hits = np.rint(acc * count).astype(np.int64)
    low, high = wilson_interval(hits, count, alpha)
    out = {**bins, "hits": hits.tolist(), "accuracy_low": _floats(low), "accuracy_high": _floats(high),
           "interval": f"Wilson {1 - alpha:.0%}", "n": int(count.sum())}
    if bins.get("class_index") is not None:
        out["n_positive"] = int(hits.sum())
    return out


def reliability_panels(y_true: Any, y_prob: Any, n_bins: int = 15) -> list[dict[str, Any]]:
    """Reliability bins (:func:`xai_bt.evaluation.calibration.reliability_bins`) overall, then one-vs-rest
    for each class, each with its bins' Wilson 95% intervals (:func:`with_bin_intervals`): what
    :func:`xai_bt.plots.evaluation.plot_reliability_grid` draws."""
    from xai_bt.evaluation.calibration import reliability_bins  # calibration imports this module

    y, p = check_inputs(y_true, y_prob)
    return [with_bin_intervals(reliability_bins(y, p, n_bins=n_bins, class_index=c))
            for c in (None, *range(p.shape[1]))]

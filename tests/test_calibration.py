"""Calibration metrics on cases with known answers, and temperature scaling on a synthetic model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import log_loss

from xai_bt.evaluation import calibration as cal


def sample_labels(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one label per row from its probabilities: the probabilities are then calibrated by construction."""
    return (rng.random(len(p))[:, None] > np.cumsum(p, axis=1)).sum(axis=1).clip(max=p.shape[1] - 1)


@pytest.fixture(scope="module")
def synthetic():
    """True logits z (k=4), labels drawn from softmax(z), and an over-confident model with logits 3z."""
    rng = np.random.default_rng(0)
    z = rng.normal(scale=1.5, size=(40_000, 4))
    y = sample_labels(softmax(z, axis=1), rng)
    return z, y


# --------------------------------------------------------------------------------------------- ECE family
def test_ece_hand_computed():
    # n_bins=2, bins (0, .5] and (.5, 1]. Low bin: conf .4, wrong -> gap .4 (1 sample).
    # High bin: conf .9 .8 .6 .7 (mean .75), 3 of 4 right (.75) -> gap 0. ECE = .4 / 5; MCE = .4.
    p = np.array([[0.4, 0.3, 0.3], [0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.6, 0.2, 0.2], [0.2, 0.1, 0.7]])
    y = np.array([1, 0, 0, 0, 2])
    assert cal.ece(y, p, n_bins=2) == pytest.approx(0.08)
    assert cal.mce(y, p, n_bins=2) == pytest.approx(0.4)
    # With 10 bins every sample has its own bin: |0-.4| + |1-.9| + |0-.8| + |1-.6| + |1-.7| = 2.0 -> 0.4.
    assert cal.ece(y, p, n_bins=10) == pytest.approx(0.4)


def test_bins_are_right_closed():
    """Guo et al. bins are ((m-1)/M, m/M]: a confidence of exactly 0.5 falls in the lower of two bins."""
    bins = cal.reliability_bins([0, 1], [[0.5, 0.5], [0.9, 0.1]], n_bins=2)
    assert bins["count"] == [1, 1]
    assert bins["confidence"] == pytest.approx([0.5, 0.9])
    assert bins["accuracy"] == pytest.approx([1.0, 0.0])


def test_calibrated_set_has_small_ece(synthetic):
    z, y = synthetic
    p = softmax(z, axis=1)
    assert cal.ece(y, p) < 0.02
    assert cal.classwise_ece(y, p) < 0.02


def test_overconfident_set_has_large_ece(synthetic):
    z, y = synthetic
    p = softmax(3 * z, axis=1)
    assert cal.ece(y, p) > 0.1
    report = cal.calibration_report(y, p)
    assert report["overconfidence"] > 0.1 and report["mce"] >= report["ece"]


def test_brier_and_nll_against_definitions(synthetic):
    z, y = synthetic
    p = softmax(z[:500], axis=1)
    onehot = np.eye(4)[y[:500]]
    assert cal.brier_score(y[:500], p) == pytest.approx(np.mean(np.sum((p - onehot) ** 2, axis=1)))
    assert cal.brier_score([0], [[1.0, 0.0]]) == 0 and cal.brier_score([1], [[1.0, 0.0]]) == 2
    assert cal.nll(y[:500], p) == pytest.approx(log_loss(y[:500], p, labels=range(4)))


def test_reliability_bins_per_class(synthetic):
    z, y = synthetic
    p = softmax(z, axis=1)
    bins = cal.reliability_bins(y, p, n_bins=10, class_index=1)
    assert sum(bins["count"]) == len(y) and len(bins["edges"]) == 11
    assert bins["ece"] == pytest.approx(cal.classwise_ece_per_class(y, p, n_bins=10)[1])
    full = [i for i, c in enumerate(bins["count"]) if c > 100]
    assert np.allclose([bins["accuracy"][i] for i in full], [bins["confidence"][i] for i in full], atol=0.05)
    with pytest.raises(ValueError):
        cal.reliability_bins(y, p, class_index=4)


def test_report_is_json_serialisable(synthetic):
    z, y = synthetic
    report = cal.calibration_report(y, softmax(z, axis=1))
    json.dumps(report, allow_nan=False)
    assert {"ece", "mce", "classwise_ece", "brier", "nll", "accuracy"} <= set(report)


# --------------------------------------------------------------------------------------------- temperature
def test_temperature_scaling_repairs_overconfidence(synthetic):
    z, y = synthetic
    logits = 3 * z
    half = len(y) // 2
    t = cal.fit_temperature(logits[:half], y[:half])
    assert t == pytest.approx(3.0, rel=0.1)

    before = softmax(logits[half:], axis=1)
    after = cal.apply_temperature(logits[half:], t)
    assert cal.nll(y[half:], after) < cal.nll(y[half:], before) - 0.1
    assert cal.ece(y[half:], after) < 0.02 < cal.ece(y[half:], before)
    assert np.array_equal(after.argmax(1), before.argmax(1))  # accuracy unchanged


def test_temperature_from_probabilities_matches_logits(synthetic):
    z, y = synthetic
    probs = softmax(3 * z[:5000], axis=1)
    t_probs = cal.fit_temperature_from_probs(probs, y[:5000])
    assert t_probs == pytest.approx(cal.fit_temperature(3 * z[:5000], y[:5000]), rel=1e-3)
    assert np.allclose(cal.apply_temperature(np.log(probs), t_probs), cal.apply_temperature(3 * z[:5000], t_probs))


def test_apply_temperature_one_is_softmax():
    z = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    assert np.allclose(cal.apply_temperature(z, 1.0), softmax(z, axis=1))
    with pytest.raises(ValueError):
        cal.apply_temperature(z, 0.0)


def test_temperature_and_bias_recover_a_known_shift():
    """Logits of a calibrated model pushed towards the last class by a known offset: the fitted biases undo
    the offset (up to the b[-1] = 0 convention), and cross-validation prefers them to T alone."""
    from xai_bt.evaluation.calibration import cross_validated_bias_gain, fit_temperature_and_bias

    rng = np.random.default_rng(0)
    n, k = 4000, 4
    true_logits = rng.normal(0, 2.0, (n, k))
    p = np.exp(true_logits - true_logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    shift = np.array([0.0, 0.0, 0.0, 1.5])
    t, b = fit_temperature_and_bias(true_logits + shift, y)
    assert t == pytest.approx(1.0, abs=0.1)
    assert b - b.mean() == pytest.approx(-(shift - shift.mean()), abs=0.2)
    assert b[-1] == 0.0
    cv = cross_validated_bias_gain(true_logits + shift, y)
    assert cv["temperature_and_bias"] < cv["temperature"]
    with pytest.raises(ValueError, match="all 4 classes"):
        fit_temperature_and_bias(true_logits[y < 3], y[y < 3])

"""Deletion/insertion and ROAD on models whose influential pixels are known; the randomisation sanity
check on a tiny trained Keras model; agreement with Quantus' ROAD, its imputation and MPRT."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from xai_bt.audit import faithfulness
from xai_bt.audit import randomisation as sanity

S = 16


# ----------------------------------------------------------------------- a model with known evidence
def linear_evidence_model(side: int = S, seed: int = 0):
    """Two-class model whose class-1 logit rises with the w-weighted mean intensity, w > 0 on a random
    half of the pixels. Relative to the image's mean (the "mean" baseline), pixel i contributes exactly
    w_i (x_i - mean) to the logit: that map ranks the truly influential pixels first."""
    rng = np.random.default_rng(seed)
    w = np.where(rng.random((side, side)) < 0.5, rng.uniform(0.5, 2.0, (side, side)), 0.0)
    w /= w.sum()

    def predict(batch: np.ndarray) -> np.ndarray:
        z = 20.0 * ((batch[..., 0] * w).sum(axis=(1, 2)) - 0.5)
        p1 = 1 / (1 + np.exp(-z))
        return np.stack([1 - p1, p1], axis=1)

    def true_contribution(x: np.ndarray) -> np.ndarray:
        g = x[..., 0]
        return w[None] * (g - g.mean(axis=(1, 2), keepdims=True))

    return predict, true_contribution


def images(n: int = 6, side: int = S, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, side, side, 1)).astype(np.float32)


def test_deletion_auc_lower_and_insertion_higher_for_the_true_ranking():
    predict, contribution = linear_evidence_model()
    x = images()
    good = contribution(x)
    rand = np.random.default_rng(2).random(good.shape)
    res = {name: faithfulness.deletion_insertion(predict, x, maps, target=1, steps=16, baseline="mean",
                                                 batch_size=20)
           for name, maps in {"good": good, "random": rand, "reversed": -good}.items()}
    assert np.all(res["good"]["deletion_auc"] < res["random"]["deletion_auc"])
    assert np.all(res["random"]["deletion_auc"] < res["reversed"]["deletion_auc"])
    assert np.all(res["good"]["insertion_auc"] > res["reversed"]["insertion_auc"])
    curves = res["good"]["curves"]
    assert curves["deletion"].shape == (6, 17) and curves["fraction"][[0, -1]].tolist() == [0.0, 1.0]
    np.testing.assert_allclose(curves["deletion"][:, 0], predict(x)[:, 1])     # nothing removed yet
    np.testing.assert_allclose(curves["deletion"][:, -1], curves["insertion"][:, 0])  # all baseline


def test_deletion_insertion_blur_baseline_and_per_image_targets():
    predict, contribution = linear_evidence_model()
    x = images(n=3)
    out = faithfulness.deletion_insertion(predict, x, contribution(x), target=[1, 0, 1], steps=4)
    np.testing.assert_allclose(out["curves"]["insertion"][:, -1], predict(x)[[0, 1, 2], [1, 0, 1]], rtol=1e-6)
    with pytest.raises(ValueError, match="heatmaps must be"):
        faithfulness.deletion_insertion(predict, x, np.zeros((3, S, S + 1)), target=1)
    with pytest.raises(ValueError, match="baseline"):
        faithfulness.deletion_insertion(predict, x, np.zeros((3, S, S)), target=1, baseline="zero")


def test_imputation_recovers_a_linear_ramp_and_matches_quantus():
    yy, xx = np.mgrid[:S, :S].astype(float)
    ramp = (2 * yy + 3 * xx)[..., None]
    removed = np.zeros((S, S), dtype=bool)
    removed[4:12, 5:10] = True
    np.testing.assert_allclose(faithfulness.noisy_linear_imputation(ramp, removed), ramp, atol=1e-9)

    pytest.importorskip("quantus")
    from quantus.functions.perturb_func import noisy_linear_imputation

    rng = np.random.default_rng(0)
    img = rng.normal(size=(S, S, 1))
    removed = rng.random((S, S)) < 0.4               # touches the borders too
    ours = faithfulness.noisy_linear_imputation(img, removed)
    theirs = noisy_linear_imputation(np.moveaxis(img, -1, 0), np.flatnonzero(removed), noise=0.0)
    np.testing.assert_allclose(ours[..., 0], theirs[0], atol=1e-10)


def test_road_morf_falls_below_lerf_for_the_true_ranking():
    predict, contribution = linear_evidence_model()
    x = images()
    good = contribution(x)
    kw = dict(target=1, percentages=(20, 50, 80), noise=0.01, seed=3)
    morf = faithfulness.road(predict, x, good, order="morf", **kw)
    lerf = faithfulness.road(predict, x, good, order="lerf", **kw)
    assert morf["probability"].shape == (6, 3)
    assert np.all(morf["probability"][:, 1:].mean(axis=0) < lerf["probability"][:, 1:].mean(axis=0))
    again = faithfulness.road(predict, x, good, order="morf", **kw)
    np.testing.assert_array_equal(again["probability"], morf["probability"])  # seeded noise


def test_road_agrees_with_quantus_on_a_keras_model():
    quantus = pytest.importorskip("quantus")
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((S, S, 1))
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inp))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, S, S, 1)).astype(np.float32)
    y = model.predict(x, verbose=0).argmax(axis=1)
    maps = rng.normal(size=(12, S, S))
    pct = [10, 30, 50, 70, 90]
    theirs = quantus.ROAD(noise=0.0, percentages=pct, disable_warnings=True)(
        model=model, x_batch=x, y_batch=y, a_batch=maps[:, None], channel_first=False, batch_size=len(x))
    ours = faithfulness.road(lambda b: model.predict(b, verbose=0), x, maps, y, percentages=pct, noise=0.0)
    np.testing.assert_allclose(ours["accuracy"], [theirs[p] for p in pct])
    assert 0 < ours["accuracy"].min() < 1           # the comparison is not vacuous


# ------------------------------------------------------------------------------ randomisation check
@pytest.fixture(scope="module")
def trained():
    """A tiny CNN trained to say whether a bright square is present (accuracy ~1 after 3 epochs)."""
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    side, n = 24, 256
    x = rng.normal(20, 5, size=(n, side, side, 1)).astype(np.float32)
    y = rng.integers(0, 2, n)
    for i in np.flatnonzero(y):
        r, c = rng.integers(2, side - 8, 2)
        x[i, r:r + 6, c:c + 6] += 100
    x /= 255.0
    inp = keras.Input((side, side, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(h)
    out = keras.layers.Dense(2, activation="softmax", name="head")(keras.layers.GlobalMaxPooling2D()(h))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert model.evaluate(x, y, verbose=0)[1] > 0.9
    return model, x[:8], y[:8]


def gradient(model, x, targets):
    """Plain input gradient of the target probability: depends on every weight."""
    import tensorflow as tf

    xt = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        score = tf.gather(model(xt), targets, axis=1, batch_dims=1)
    return tape.gradient(score, xt).numpy()[..., 0]


def sobel(model, x, targets):
    """An edge detector: a 'heatmap' that ignores the model entirely."""
    g = x[..., 0]
    return np.hypot(ndimage.sobel(g, axis=1), ndimage.sobel(g, axis=2))


def test_randomisation_flags_an_edge_filter_and_passes_gradients(trained):
    model, x, y = trained
    before = [w.copy() for w in model.get_weights()]
    edge = sanity.randomisation_test(model, sobel, x, y)
    grad = sanity.randomisation_test(model, gradient, x, y)
    assert [r["layer"] for r in grad] == sanity.weighted_layers(model) == ["head", "conv2", "conv1"]
    assert all(r["spearman"] == pytest.approx(1.0) and r["ssim"] == pytest.approx(1.0) for r in edge)
    assert sanity.flag_insensitive(edge)
    assert not sanity.flag_insensitive(grad) and grad[-1]["spearman"] < 0.3 and grad[-1]["ssim"] < 0.6
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # original untouched
    assert len(grad[0]["spearman_per_image"]) == len(x)


def test_randomisation_is_cascading_seeded_and_checks_layers(trained):
    model, x, y = trained
    # Re-drawing only the head keeps |gradient| maps' ranking (a 2-class head only rescales them);
    # randomising the convolutions below it does not: the cascade goes layer by layer.
    steps = sanity.randomisation_test(model, gradient, x, y, absolute=True)
    assert steps[0]["spearman"] > 0.9 > 0.5 > steps[-1]["spearman"]
    coarse = sanity.randomisation_test(model, gradient, x, y, layers=["conv2"], seed=0, absolute=True)
    again = sanity.randomisation_test(model, gradient, x, y, layers=["conv2"], seed=0, absolute=True)
    assert coarse[0]["spearman"] == again[0]["spearman"] == pytest.approx(steps[1]["spearman"])
    with pytest.raises(ValueError, match="top-down"):
        sanity.randomisation_test(model, gradient, x, y, layers=["conv1", "head"])
    with pytest.raises(ValueError, match="not in the model"):
        sanity.randomisation_test(model, gradient, x, y, layers=["nope"])


def test_matches_quantus_mprt_on_a_model_independent_map(trained):
    quantus = pytest.importorskip("quantus")
    model, x, y = trained
    ours = sanity.randomisation_test(model, sobel, x, y)

    def explain(model, inputs, targets, **kwargs):
        return sobel(model, np.moveaxis(inputs, 1, -1) if inputs.shape[1] == 1 else inputs, targets)[:, None]

    theirs = quantus.MPRT(abs=False, normalise=False, disable_warnings=True)(
        model=model, x_batch=x, y_batch=y, a_batch=sobel(model, x, y)[:, None], channel_first=False,
        explain_func=explain, batch_size=len(x))
    assert [r["layer"] for r in ours] == [k for k in theirs if k != "original"]
    for r in ours:
        np.testing.assert_allclose(theirs[r["layer"]], r["spearman_per_image"])

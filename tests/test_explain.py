"""Attribution methods: agreement with tf-keras-vis, localisation on a model that can only see one
quadrant, Integrated Gradients completeness, and the explain() API on bundles (single, two-stage,
cascade, real scans)."""
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import SAMPLES

from xai_bt.attribution import cams, registry
from xai_bt.attribution.explain import METHODS, attribute, explain, explain_batch
from xai_bt.attribution.gradients import unit_max
from xai_bt.model.architectures import build, view_classifier, xai_cnn
from xai_bt.model.bundle import Bundle, default_model_path, load_model
from xai_bt.model.preprocessing import Preprocessing

CLASSES = ("glioma", "meningioma", "no_tumor", "pituitary")
FAST = dict(max_n=4, smooth_samples=4, steps=8, shap_samples=8, max_evals=40)  # every method's cost knob, small


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 1)).astype(np.float32)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def small():
    """Random-init xai_cnn at 32 px: a flat graph with batch norm, separable convs and a residual path."""
    keras.utils.set_random_seed(0)
    return build("xai_cnn", 32, 4).model


class QuadrantMask(keras.layers.Layer):
    """Zeroes everything outside the top-right quadrant: the model cannot see the rest of the image."""

    def call(self, x):
        h, w = x.shape[1], x.shape[2]
        rows = keras.ops.arange(h)[:, None] < h // 2
        cols = keras.ops.arange(w)[None, :] >= w // 2
        return x * keras.ops.cast(keras.ops.logical_and(rows, cols), x.dtype)[None, :, :, None]


@pytest.fixture(scope="module")
def quadrant():
    """64 px model behind QuadrantMask; non-negative conv/dense weights and no biases, so the class-0
    score grows with every visible pixel and nothing outside the quadrant can matter."""
    keras.utils.set_random_seed(1)
    pos = keras.initializers.RandomUniform(0.0, 0.1)
    inp = keras.Input((64, 64, 1), name="image")
    x = QuadrantMask(name="quadrant")(inp)
    x = keras.layers.Rescaling(1 / 255.0)(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", use_bias=False, kernel_initializer=pos)(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", use_bias=False,
                            kernel_initializer=pos)(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", use_bias=False,
                            kernel_initializer=pos, name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(3, use_bias=False, kernel_initializer=pos, name="logits")(x)
    return keras.Model(inp, keras.layers.Activation("softmax", name="probabilities")(logits))


def _bundle(kind: str, networks: dict, size: int, **config) -> Bundle:
    cfg = {"kind": kind, "name": f"tiny_{kind}", "class_names": list(CLASSES),
           "preprocessing": Preprocessing(image_size=size).to_dict(), "last_conv_layer": "stage4_out", **config}
    return Bundle(Path("."), cfg, networks)


@pytest.fixture(scope="module")
def two_stage() -> Bundle:
    keras.utils.set_random_seed(2)
    view = view_classifier("xai_cnn", 32, 3).model
    model = xai_cnn(32, 4, extra_input=True).model
    return _bundle("two_stage", {"view": view, "model": model}, 32, view_names=["axial", "coronal", "sagittal"])


# --- agreement with tf-keras-vis ---------------------------------------------------------------------

def test_gradcam_equals_tf_keras_vis_before_upsampling(small):
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    x, targets = _images(4, 32), np.array([0, 1, 2, 3])
    ref = Gradcam(small, model_modifier=ReplaceToLinear(), clone=True)(
        CategoricalScore(list(targets)), x, penultimate_layer="stage4_out", seek_penultimate_conv_layer=False,
        activation_modifier=None,
        expand_cam=False, normalize_cam=False)
    acts, grads, _ = cams.cam_pass(small, "stage4_out")([x], targets)
    np.testing.assert_allclose(cams.gradcam(acts, grads), np.asarray(ref), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_cams_match_tf_keras_vis_after_upsampling(small, method):
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.layercam import Layercam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    cls = {"gradcam": Gradcam, "gradcam++": GradcamPlusPlus, "layercam": Layercam}[method]
    x = _images(6, 32, seed=3)
    targets = small.predict(x, verbose=0).argmax(1)
    ref = cls(small, model_modifier=ReplaceToLinear(), clone=True)(
        CategoricalScore(list(targets)), x, penultimate_layer="stage4_out", seek_penultimate_conv_layer=False,
        expand_cam=False)
    ref = cams.finish(np.asarray(ref), (32, 32))  # the same upsampling for both
    ours = explain_batch(small, x, targets, method)[method]
    compared = [i for i in range(len(x)) if ref[i].max() > 0]
    assert len(compared) >= 3
    for i in compared:
        assert _corr(ours[i], ref[i]) > 0.99


def test_two_input_gradcam_matches_tf_keras_vis(two_stage):
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    net, x = two_stage.model, _images(3, 32, seed=4)
    v = two_stage.view_features(x)
    ref = Gradcam(net, model_modifier=ReplaceToLinear(), clone=True)(
        CategoricalScore([0, 1, 2]), [x, v], penultimate_layer="stage4_out", seek_penultimate_conv_layer=False,
        activation_modifier=None,
        expand_cam=False, normalize_cam=False)
    acts, grads, _ = cams.cam_pass(net, "stage4_out")([x, v], np.array([0, 1, 2]))
    np.testing.assert_allclose(cams.gradcam(acts, grads), np.asarray(ref), rtol=1e-4, atol=1e-6)


def test_faster_scorecam_matches_tf_keras_vis(small):
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    x = _images(2, 32, seed=12)
    targets = small.predict(x, verbose=0).argmax(1)
    ours = explain_batch(small, x, targets, "fasterscorecam", max_n=8)["fasterscorecam"]
    ref = Scorecam(small, model_modifier=ReplaceToLinear(), clone=True)
    for i in range(len(x)):  # tf-keras-vis picks channels over the whole batch; we pick per image
        cam = ref(CategoricalScore([int(targets[i])]), x[i:i + 1], penultimate_layer="stage4_out",
                  seek_penultimate_conv_layer=False, expand_cam=False, max_N=8)
        assert _corr(ours[i], cams.finish(np.asarray(cam), (32, 32))[0]) > 0.99


def test_two_input_saliency_matches_tf_keras_vis(two_stage):
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    net, x = two_stage.model, _images(2, 32, seed=13)
    v = two_stage.view_features(x)
    image_grads, view_grads = Saliency(net, model_modifier=ReplaceToLinear(), clone=True)(
        CategoricalScore([3, 1]), [x, v], keepdims=True, normalize_map=False)
    ours = attribute(net, x, [3, 1], "saliency", extra_inputs=[v])["saliency"]
    np.testing.assert_allclose(ours.inputs[0], view_grads, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(ours.maps * ours.info["scale"][:, None, None], np.max(image_grads, axis=-1),
                               rtol=1e-4, atol=1e-9)


# --- localisation and completeness ----------------------------------------------------------------

def test_every_method_peaks_in_the_only_visible_quadrant(quadrant):
    x = _images(3, 64, seed=5)
    maps = explain_batch(quadrant, x, 0, METHODS, layer="last_conv", **FAST)
    for method, m in maps.items():
        for i in range(len(x)):
            r, c = np.unravel_index(np.argmax(m[i]), m[i].shape)
            assert r < 32 and c >= 32, f"{method}: peak at {(r, c)} outside the top-right quadrant"


@pytest.mark.parametrize("model_name", ["small", "quadrant"])
def test_integrated_gradients_completeness(model_name, request):
    model = request.getfixturevalue(model_name)
    x = _images(3, model.input_shape[1], seed=6)
    result = attribute(model, x, [0, 1, 2], "integrated_gradients", steps=64)["integrated_gradients"]
    logits = keras.Model(model.inputs, model.get_layer("logits").output)
    f = logits.predict(x, verbose=0)[np.arange(3), [0, 1, 2]]
    f0 = logits.predict(np.zeros_like(x), verbose=0)[np.arange(3), [0, 1, 2]]
    sums = result.maps.reshape(3, -1).sum(1)
    np.testing.assert_allclose(sums, f - f0, rtol=0.02, atol=1e-6)
    assert np.all(result.info["completeness_error"] < 0.02)


# --- shapes, ranges, options -------------------------------------------------------------------------

def test_every_method_shape_range_finite(small):
    x = _images(2, 32, seed=7)
    maps = explain_batch(small, x, [1, 3], METHODS, **FAST)
    assert tuple(maps) == METHODS
    for method, m in maps.items():
        assert m.shape == (2, 32, 32) and m.dtype == np.float32 and np.all(np.isfinite(m)), method
        if registry.spec(method).is_cam or method in ("saliency", "smoothgrad"):
            assert m.min() >= 0 and m.max() <= 1, method


def test_zero_maps_stay_zero_and_batches_are_independent(small):
    maps, scale = unit_max(np.zeros((2, 5, 5)))
    assert np.all(maps == 0) and np.all(scale == 0)
    x, targets = _images(5, 32, seed=8), [0, 1, 2, 3, 0]
    methods = ("gradcam", "gradcam++", "layercam", "fasterscorecam", "saliency", "occlusion")
    a = explain_batch(small, x, targets, methods, batch_size=2)
    b = explain_batch(small, x, targets, methods, batch_size=5)
    for m in methods:
        np.testing.assert_allclose(a[m], b[m], rtol=1e-4, atol=1e-5)


def test_faster_scorecam_with_all_channels_is_scorecam(small):
    x = _images(2, 32, seed=9)
    maps = explain_batch(small, x, [0, 1], ("scorecam", "fasterscorecam"), max_n=256)
    np.testing.assert_allclose(maps["scorecam"], maps["fasterscorecam"], atol=1e-5)


def test_bad_arguments_are_clear(small):
    x = _images(1, 32)
    with pytest.raises(ValueError, match="unknown method"):
        explain_batch(small, x, 0, "gradcam+")
    with pytest.raises(TypeError, match="steps"):
        explain_batch(small, x, 0, "gradcam", steps=10)
    with pytest.raises(ValueError, match="not a spatial"):
        explain_batch(small, x, 0, "gradcam", layer="logits")
    with pytest.raises(ValueError, match="class indices"):
        explain_batch(small, x, 4, "saliency")


# --- explain() on bundles ---------------------------------------------------------------------------

def test_explain_real_scans_single_bundle():
    keras.utils.set_random_seed(3)
    bundle = _bundle("single", {"model": build("xai_cnn", 64, 4).model}, 64)
    files = sorted(str(p) for p in SAMPLES.glob("*.jpg"))
    out = explain(bundle, files, methods=("gradcam", "layercam", "integrated_gradients"), batch_size=3)
    assert [e.path for e in out] == files
    for e in out:
        assert e.image.shape == (64, 64) and e.layer == "stage4_out" and e.model_name == "tiny_single"
        assert e.target == int(np.argmax(e.probabilities)) and e.target_name == CLASSES[e.target]
        assert set(e.maps) == {"gradcam", "layercam", "integrated_gradients"}
        assert e.extra["integrated_gradients"]["completeness_error"] < 0.02
    named = explain(bundle, files[:2], methods="saliency", target="pituitary")
    assert [e.target for e in named] == [3, 3] and named[0].target_name == "pituitary" and named[0].layer is None
    with pytest.raises(ValueError, match="glioma, meningioma"):
        explain(bundle, files[:1], target="tumour")


def test_two_stage_view_attribution(two_stage):
    x = _images(2, 32, seed=10)
    out = explain(two_stage, x, methods=("gradcam", "saliency", "smoothgrad", "integrated_gradients",
                                         "shap_gradient", "occlusion", "shap_partition"),
                  smooth_samples=4, shap_samples=8, max_evals=40, steps=256)
    for e in out:
        assert set(e.view_attribution) == {"saliency", "smoothgrad", "integrated_gradients", "shap_gradient"}
        assert all(m.shape == (32, 32) and np.all(np.isfinite(m)) for m in e.maps.values())
        assert all(v.shape == (128,) and np.all(np.isfinite(v)) for v in e.view_attribution.values())
        assert e.view_probabilities.shape == (3,) and e.view_names == ("axial", "coronal", "sagittal")
        assert e.extra["integrated_gradients"]["completeness_error"] < 0.02  # the view vector's share counts


def test_cascade_networks():
    keras.utils.set_random_seed(4)
    bundle = _bundle("cascade", {"stage1": build("xai_cnn", 32, 2).model, "stage2": build("xai_cnn", 32, 3).model},
                     32, stage1_classes=["no_tumor", "tumor"], stage2_classes=["glioma", "meningioma", "pituitary"])
    x = _images(2, 32, seed=11)
    s1 = explain(bundle, x, network="stage1", target="tumor")
    assert s1[0].class_names == ("no_tumor", "tumor") and s1[0].target == 1 and s1[0].probabilities.shape == (2,)
    assert explain(bundle, x, network="stage2")[0].class_names == ("glioma", "meningioma", "pituitary")
    with pytest.raises(ValueError, match="stage1"):
        explain(bundle, x, network="view")


def test_cascade_decision_is_explained_by_the_stage_that_made_it():
    """network="model" on a cascade: four-class probabilities; a scan called no tumor gets stage 1's
    no_tumor map, a tumor gets stage 2's map of its type (the same maps as asking that stage directly)."""
    keras.utils.set_random_seed(6)
    bundle = _bundle("cascade", {"stage1": build("xai_cnn", 32, 2).model, "stage2": build("xai_cnn", 32, 3).model},
                     32, stage1_classes=["no_tumor", "tumor"], stage2_classes=["glioma", "meningioma", "pituitary"])
    x = _images(4, 32, seed=12)
    auto = explain(bundle, x, methods=("gradcam", "saliency"), batch_size=3)
    probs = bundle.predict_prepared(x).probabilities
    assert [e.class_names for e in auto] == [CLASSES] * 4
    np.testing.assert_allclose(np.stack([e.probabilities for e in auto]), probs, atol=1e-6)
    for e in auto:
        assert e.network == ("stage1" if e.target_name == "no_tumor" else "stage2")
    targets = ["no_tumor", "glioma", "pituitary", "no_tumor"]
    mixed = explain(bundle, x, methods=("gradcam", "saliency"), target=targets, batch_size=3)
    assert [e.network for e in mixed] == ["stage1", "stage2", "stage2", "stage1"]
    assert [e.target_name for e in mixed] == targets
    s1 = explain(bundle, x, methods=("gradcam", "saliency"), network="stage1", target="no_tumor")
    s2 = explain(bundle, x, methods=("gradcam", "saliency"), network="stage2", target="glioma")
    for m in ("gradcam", "saliency"):
        np.testing.assert_allclose(mixed[0].maps[m], s1[0].maps[m], atol=1e-5)
        np.testing.assert_allclose(mixed[3].maps[m], s1[3].maps[m], atol=1e-5)
        np.testing.assert_allclose(mixed[1].maps[m], s2[1].maps[m], atol=1e-5)


def test_shipped_model_explains_a_sample():
    path = default_model_path()
    if not (path / "bundle.json").is_file():
        pytest.skip(f"no shipped model at {path}")
    bundle = load_model(path)
    (e,) = explain(bundle, str(SAMPLES / "glioma.jpg"), methods=("gradcam", "saliency"))
    size = bundle.preprocessing.image_size
    assert all(m.shape == (size, size) and np.all(np.isfinite(m)) and m.max() > 0 for m in e.maps.values())


@pytest.mark.parametrize("kind", ["single", "two_stage", "cascade"])
@pytest.mark.parametrize("target", [None, "pituitary"])
def test_shared_cam_pass_equals_separate_predict_and_pass(kind, target, two_stage):
    """explain() predicts from the CAM pass's own logits (every class's gradient kept until the prediction
    picks one); it must give what a separate prediction and a per-target pass give, flip TTA included."""
    keras.utils.set_random_seed(5)
    if kind == "single":
        bundle = _bundle("single", {"model": build("xai_cnn", 32, 4).model}, 32, tta="hflip")
    elif kind == "two_stage":
        bundle = two_stage
    else:
        bundle = _bundle("cascade", {"stage1": build("xai_cnn", 32, 2).model,
                                     "stage2": build("xai_cnn", 32, 3).model}, 32,
                         stage1_classes=["no_tumor", "tumor"], stage2_classes=["glioma", "meningioma", "pituitary"])
    x = _images(5, 32, seed=21)
    methods = ("gradcam", "gradcam++", "layercam", "saliency")
    out = explain(bundle, x, methods=methods, target=target, batch_size=2,
                  network="stage2" if kind == "cascade" else "model")
    pred = bundle.predict_prepared(x)
    probs = pred.stage_probabilities["stage2"] if kind == "cascade" else pred.probabilities
    net = bundle.networks["stage2" if kind == "cascade" else "model"]
    names = ("glioma", "meningioma", "pituitary") if kind == "cascade" else CLASSES
    targets = probs.argmax(axis=1) if target is None else np.full(len(x), names.index(target))
    extra = [bundle.view_features(x)] if kind == "two_stage" else []
    ref = explain_batch(net, x, targets, methods, layer="stage4_out", extra_inputs=extra)
    np.testing.assert_allclose(np.stack([e.probabilities for e in out]), probs, atol=1e-5)
    assert [e.target for e in out] == targets.tolist()
    for m in methods:
        np.testing.assert_allclose(np.stack([e.maps[m] for e in out]), ref[m], atol=1e-4)

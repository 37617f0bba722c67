"""HiResCAM, XGrad-CAM and Layer-CAM fused over layers: their defining identities on real graphs, and
Integrated Gradients' baselines and completeness."""
import keras
import numpy as np
import pytest

from xai_bt.attribution import cams
from xai_bt.attribution.explain import explain_batch
from xai_bt.attribution.gradients import ig_baseline, integrated_gradients
from xai_bt.model.architectures import build


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def small():
    keras.utils.set_random_seed(0)
    return build("xai_cnn", 32, 4).model


def test_hirescam_and_xgradcam_equal_gradcam_before_a_pooled_dense_head(small):
    """On the feature map that is average-pooled into the dense head, the score's gradient is the same at
    every position (W / hw), so HiResCAM and XGrad-CAM reduce to Grad-CAM (Draelos & Carin 2020)."""
    x = _images(3, 32)
    maps = explain_batch(small, x, [0, 1, 2], ["gradcam", "hirescam", "xgradcam"], layer="stage4_out")
    assert maps["gradcam"].max() > 0
    for m in ("hirescam", "xgradcam"):
        np.testing.assert_allclose(maps[m], maps["gradcam"], atol=2e-4)


def test_hirescam_is_elementwise_and_keeps_negative_evidence_out():
    """HiResCAM sums gradient x activation per position (no channel averaging): a position whose product
    is negative gets nothing after the ReLU, where Grad-CAM's averaged weights would credit it."""
    acts = np.zeros((1, 2, 2, 2))
    acts[0, 0, 0] = [1.0, 0.0]
    acts[0, 1, 1] = [0.0, 1.0]
    grads = np.zeros_like(acts)
    grads[0, 0, 0] = [2.0, 0.0]          # channel 0 helps where it is active
    grads[0, 1, 1] = [0.0, -1.0]         # channel 1 hurts where it is active
    grads[0, 0, 1] = [0.0, 3.0]          # ... but has a large gradient where it is inactive
    hires = cams.hirescam(acts, grads)[0]
    assert hires[0, 0] == 2.0 and hires[1, 1] == -1.0
    grad = cams.gradcam(acts, grads)[0]   # mean gradient of channel 1 is +0.5: Grad-CAM credits (1, 1)
    assert grad[1, 1] > 0


def test_fusion_of_one_layer_is_layercam_and_defaults_span_resolutions(small):
    x = _images(2, 32, seed=3)
    one = explain_batch(small, x, [0, 3], ["layercam_fusion"], layer="stage4_out", layers=("stage4_out",))
    plain = explain_batch(small, x, [0, 3], ["layercam"], layer="stage4_out")
    np.testing.assert_allclose(one["layercam_fusion"], plain["layercam"], atol=1e-5)
    layers = cams.fusion_layers(small, 3)
    from xai_bt.model.layers import spatial_layer_shapes

    shapes = dict(spatial_layer_shapes(small))
    sides = [shapes[p][0] for p in layers]
    assert sides == sorted(set(sides)) and len(sides) == 3                 # three resolutions, coarse first
    for fuse in cams.FUSE_RULES:
        m = explain_batch(small, x, [0, 3], ["layercam_fusion"], fuse=fuse)["layercam_fusion"]
        assert m.shape == (2, 32, 32) and np.isfinite(m).all() and 0 <= m.min() and m.max() <= 1
    with pytest.raises(ValueError, match="fuse must be one of"):
        explain_batch(small, x, [0, 3], ["layercam_fusion"], fuse="sum")


def test_product_fusion_is_the_geometric_mean_of_the_layers(small):
    """`layercam_product`: per layer Layer-CAM scaled to [0, 1] on the finest grid, then their geometric mean
    (zero wherever one layer is), computed here from the single-layer maps."""
    x = _images(2, 32, seed=4)
    layers = cams.fusion_layers(small, 3)
    got = explain_batch(small, x, [0, 3], ["layercam_product", "layercam_fusion"])
    maps = [np.maximum(cams.layercam(*cams.layer_pass(small, [x], ly, np.array([0, 3]), 8)[:2]), 0) for ly in layers]
    fine = maps[-1].shape[1:]
    scaled = [cams.unit_max(m if m.shape[1:] == fine else cams.upsample(m, fine))[0] for m in maps]
    want = cams.finish(np.prod(np.stack(scaled), axis=0) ** (1 / 3), (32, 32))
    np.testing.assert_allclose(got["layercam_product"], want, atol=1e-5)
    assert not np.allclose(got["layercam_product"], got["layercam_fusion"], atol=1e-3)


def test_ig_baselines_and_completeness(small):
    x = _images(2, 32, seed=5)
    blurred = ig_baseline(x, "blur", 0.1)
    assert blurred.shape == x.shape and blurred.std() < x.std()            # the same scan without detail
    np.testing.assert_allclose(blurred.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), rtol=0.05)
    assert (ig_baseline(x, "black") == 0).all()
    for baseline in ("black", "blur"):
        for spacing in ("uniform", "quadratic"):
            a = integrated_gradients(small, [x], np.array([0, 2], np.int32), steps=256, baseline=baseline,
                                     spacing=spacing)
            assert a.info["baseline"] == baseline and a.info["spacing"] == spacing
            assert (a.info["completeness_error"] < 0.05).all(), (baseline, spacing, a.info["completeness_error"])
    with pytest.raises(ValueError, match="baseline must be one of"):
        integrated_gradients(small, [x], np.array([0, 2], np.int32), baseline="white")


def test_a_cam_method_can_carry_its_own_layer(small):
    """"layercam@stage3_out" is Layer-CAM on stage3_out beside methods on the default layer, in one call."""
    from xai_bt.attribution import registry
    from xai_bt.names import display_name

    x = _images(2, 32, seed=7)
    both = explain_batch(small, x, [1, 2], ["gradcam", "layercam@stage3_out"], layer="stage4_out")
    alone = explain_batch(small, x, [1, 2], ["layercam"], layer="stage3_out")
    default = explain_batch(small, x, [1, 2], ["gradcam"], layer="stage4_out")
    np.testing.assert_allclose(both["layercam@stage3_out"], alone["layercam"], atol=1e-6)
    np.testing.assert_allclose(both["gradcam"], default["gradcam"], atol=1e-6)
    assert display_name("layercam@stage3_out") == "Layer-CAM (stage3_out)"
    with pytest.raises(ValueError, match="only CAM methods take a layer"):
        registry.spec("saliency@stage3_out")
    with pytest.raises(ValueError, match="unknown method"):
        registry.check_methods("gradcam@stage3_out,nonsense")


def test_sidecars_warn_when_integrated_gradients_is_inexact():
    from xai_bt.attribution.result import Explanation
    from xai_bt.attribution.summary import explanation_summary

    maps = {"integrated_gradients": np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)}
    base = dict(image=np.zeros((16, 16), np.float32), maps=maps, target=0, target_name="glioma",
                probabilities=np.array([0.7, 0.1, 0.1, 0.1]), class_names=("glioma", "meningioma", "no_tumor",
                                                                          "pituitary"))
    exact = explanation_summary(Explanation(**base, extra={"integrated_gradients": {"completeness_error": 0.01}}))
    loose = explanation_summary(Explanation(**base, extra={"integrated_gradients": {"completeness_error": 0.2}}))
    assert "warning" not in exact["methods"]["integrated_gradients"]
    assert "20%" in loose["methods"]["integrated_gradients"]["warning"]

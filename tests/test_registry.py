"""The method registry: one spec per method, and a registered method reaches every caller."""
import numpy as np
import pytest

from xai_bt.attribution import registry


def test_every_method_has_one_spec_with_a_kind_label_and_callable():
    assert registry.METHODS == registry.names()
    assert len(set(registry.METHODS)) == len(registry.METHODS)
    for name in registry.METHODS:
        spec = registry.spec(name)
        assert spec.kind in registry.KINDS and callable(spec.function) and spec.label
        assert registry.OPTIONS[name] == dict(spec.options)
    assert set(registry.names(kind=registry.CAM_KINDS)) == {"gradcam", "gradcam++", "layercam", "hirescam",
                                                             "xgradcam", "scorecam", "fasterscorecam",
                                                             "layercam_fusion", "layercam_product"}
    for defaults in (registry.EXPLAIN_DEFAULT, registry.REVIEW_DEFAULT, registry.AUDIT_DEFAULT):
        assert registry.check_methods(defaults) == defaults


def test_options_come_from_the_function_signature():
    assert registry.spec("smoothgrad").options == {"smooth_samples": 25, "smooth_noise": 0.15, "seed": 0}
    assert registry.spec("integrated_gradients").options == {"steps": 128, "baseline": "black",
                                                              "spacing": "quadratic", "blur_sigma": 0.1}
    assert registry.spec("fasterscorecam").options == {"max_n": 10}
    assert registry.spec("gradcam").options == {}


def test_check_methods_and_labels():
    assert registry.check_methods("gradcam,layercam,gradcam") == ("gradcam", "layercam")
    assert registry.check_methods("all") == registry.names()
    with pytest.raises(ValueError, match="unknown method"):
        registry.check_methods(["gradcam", "nope"])
    with pytest.raises(ValueError, match="unknown method"):
        registry.check_methods([])
    assert registry.label("gradcam++") == "Grad-CAM++"
    assert registry.label("not_registered") == "not_registered"
    with pytest.raises(ValueError, match="already registered"):
        registry.register("gradcam", "again", "cam_weighting", lambda a, g: a.sum(-1))
    with pytest.raises(ValueError, match="kind"):
        registry.register("x", "x", "other", lambda: None)


def test_a_registered_cam_weighting_runs_in_the_shared_pass():
    """Adding a method = one function + one registration: `attribute` runs it with no other change."""
    pytest.importorskip("tensorflow")
    from xai_bt.attribution.explain import attribute
    from xai_bt.model.architectures import xai_cnn

    net = xai_cnn(32, 4).model
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype(np.float32)
    registry.register("mean_activation", "Mean activation", "cam_weighting", lambda acts, grads: acts.mean(-1))
    try:
        out = attribute(net, x, [0, 1], ["gradcam", "mean_activation"], layer="stage4_out")
    finally:
        registry.unregister("mean_activation")
    assert set(out) == {"gradcam", "mean_activation"}
    assert out["mean_activation"].maps.shape == (2, 32, 32)
    assert "mean_activation" not in registry.names()

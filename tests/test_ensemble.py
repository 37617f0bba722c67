import json
import shutil

import numpy as np
import pytest

from xai_bt import cli
from xai_bt.attribution.cams import fusion_layers, gradcam, layer_pass, layercam
from xai_bt.model.bundle import BundleError, load_model, run_network
from xai_bt.model.ensemble import ensemble_bundles
from xai_bt.model.layers import spatial_layer_shapes


@pytest.fixture(scope="module")
def pair(tiny_pair):
    """A tiny trained bundle and a copy with perturbed weights (a stand-in for a second seed)."""
    return tiny_pair(0.2)


@pytest.fixture(scope="module")
def ensemble(pair, tmp_path_factory):
    return ensemble_bundles(list(pair), tmp_path_factory.mktemp("ens") / "e")


def _batch(bundle, n=3):
    images = [np.random.default_rng(i).uniform(0, 255, (64, 64)).astype(np.uint8) for i in range(n)]
    return bundle.prepare(images)


def test_ensemble_logits_are_the_mean_of_the_members(pair, ensemble):
    members = [load_model(p) for p in pair]
    ens = load_model(ensemble)                       # safe mode: the routing layer is a registered class
    x = _batch(ens)
    mean = np.mean([run_network(m.logits_model(), x) for m in members], axis=0)
    np.testing.assert_allclose(run_network(ens.logits_model(), x), mean, rtol=1e-4, atol=1e-4)
    cfg = json.loads((ensemble / "bundle.json").read_text())
    assert cfg["kind"] == "single" and cfg["temperature"] == 1.0
    assert not {"calibration", "metrics", "competence", "explanation", "tta"} & set(cfg)
    assert [m["weight"] for m in cfg["ensemble"]["members"]] == [0.5, 0.5]
    folded = cfg["ensemble"]["folded_batchnorm"]
    assert folded > 0
    assert sum(type(la).__name__ == "BatchNormalization" for la in ens.model.layers) == sum(
        type(la).__name__ == "BatchNormalization" for m in members for la in m.model.layers) - folded
    assert (ensemble / "split.csv").read_bytes() == (pair[0] / "split.csv").read_bytes()
    card = (ensemble / "MODEL_CARD.md").read_text()
    assert "**Ensemble**" in card and "python -m xai_bt train --arch xai_cnn" in card
    assert "`xai_cnn` x 2 (an ensemble" in card
    assert f"{folded} batch normalisations are folded" in card


@pytest.mark.parametrize("kind", ["conv", "depthwise"])
def test_batchnorm_folds_into_the_convolution_before_it(kind):
    """bn(conv(x)) == folded(x) with non-trivial statistics, a conv bias and a depth multiplier of 2."""
    import keras

    from xai_bt.model.ensemble import _folded

    rng = np.random.default_rng(0)
    conv = (keras.layers.Conv2D(6, 3, padding="same") if kind == "conv"
            else keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", use_bias=False))
    bn = keras.layers.BatchNormalization(epsilon=1e-3)
    x = rng.normal(size=(2, 7, 7, 3)).astype(np.float32)
    bn(conv(x), training=False)  # builds both layers
    bn.set_weights([rng.uniform(0.5, 2, 6), rng.normal(size=6), rng.normal(size=6), rng.uniform(0.1, 3, 6)])
    layer, weights = _folded(conv, bn, "folded")
    layer(x)
    layer.set_weights(weights)
    y = np.asarray(bn(conv(x), training=False))
    assert layer.name == "folded" and y.shape == (2, 7, 7, 6)
    np.testing.assert_allclose(np.asarray(layer(x)), y, rtol=1e-4, atol=1e-5)


def test_ensemble_cams_are_the_members_maps_summed(pair, ensemble):
    """The joined layer's gradient is each member's halved, so Grad-CAM / Layer-CAM there is the mean of the
    members' maps: the heatmap explains the ensemble, not one member."""
    members = [load_model(p) for p in pair]
    ens = load_model(ensemble)
    x = _batch(ens)
    targets = np.array([0, 1, 3])
    layers = fusion_layers(members[0].model, 3)
    assert fusion_layers(ens.model, 3) == layers   # routing slices are not CAM layers
    assert not any(p.endswith("_channels") for p, _ in spatial_layer_shapes(ens.model))
    for layer in layers:
        acts, grads, _ = layer_pass(ens.logits_model(), [x], layer, targets)
        parts = [layer_pass(m.logits_model(), [x], layer, targets)[:2] for m in members]
        for fn in (gradcam, layercam):
            np.testing.assert_allclose(fn(acts, grads), np.mean([fn(a, g) for a, g in parts], axis=0),
                                       rtol=1e-3, atol=1e-5)


def test_ensemble_refuses_what_cannot_be_one_model(pair, tmp_path):
    a, b = pair
    with pytest.raises(ValueError, match="at least two"):
        ensemble_bundles([a], tmp_path / "e")
    with pytest.raises(ValueError, match="members"):
        ensemble_bundles([a, b], a, overwrite=True)
    other = tmp_path / "other"
    shutil.copytree(b, other)
    (other / "split.csv").write_text((other / "split.csv").read_text().replace(",train", ",val", 1))
    with pytest.raises(BundleError, match="split.csv differs"):
        ensemble_bundles([a, other], tmp_path / "u")


def test_ensemble_cli(pair, tmp_path, capsys):
    a, b = pair
    assert cli.main(["ensemble", str(tmp_path / "e"), str(a), str(b)]) == 0
    assert "mean of the logits" in capsys.readouterr().out
    assert cli.main(["ensemble", str(tmp_path / "e"), str(a), str(b)]) == 2
    assert "already there" in capsys.readouterr().err


def test_randomisation_steps_take_each_block_in_every_member_at_once(pair, ensemble):
    from xai_bt.audit.measure import cascade_layers
    from xai_bt.model.layers import ENSEMBLE_MEMBER

    member = cascade_layers(load_model(pair[0]).model)
    steps = cascade_layers(load_model(ensemble).model)
    assert len(steps) == len(member)
    for ours, theirs in zip(steps, member):
        assert ENSEMBLE_MEMBER.sub("", ours) == theirs


def test_review_page_says_the_model_is_an_ensemble(ensemble):
    from xai_bt.review.case import model_description, model_summary
    from xai_bt.review.html import model_html

    ens = load_model(ensemble)
    summary = model_summary(ens)
    assert summary["ensemble"] == 2
    size = ens.preprocessing.image_size
    assert f"2 x xai_cnn, input {size} px (one network: the mean of their logits)" in model_html(summary)
    assert model_description(ens.config).startswith("ensemble of 2 ")

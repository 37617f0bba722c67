"""Every architecture builds as a flat graph and takes a training step on real scans."""
import keras
import numpy as np
import pytest

from xai_bt.data.datasets import load_dataset, sample_image
from xai_bt.model import architectures
from xai_bt.model.preprocessing import Preprocessing

SIZE = {"baseline_cnn": 48, "xai_cnn": 48, "plane_cnn": 64, "vgg16": 32, "resnet50": 32, "mobilenetv2": 32,
        "efficientnetb0": 32, "efficientnet_lite0": 32, "efficientnet_lite1": 32, "efficientnet_lite2": 32}


@pytest.fixture(scope="module")
def real_batch(tiny_benchmark):
    samples = [s for s in load_dataset(tiny_benchmark) if s.split == "train"][::6]
    grays = [sample_image(s) for s in samples]
    labels = np.array([s.label_index for s in samples])
    return grays, labels


def _is_flat(model):
    return not any(isinstance(layer, keras.Model) for layer in model.layers)


# the three largest networks train their step only in the slow run (pytest -m slow)
_SLOW_ARCHS = {"efficientnetb0", "resnet50", "efficientnet_lite2"}


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in _SLOW_ARCHS else a
                                  for a in sorted(architectures.ARCHITECTURES)])
def test_builds_flat_and_trains_a_step(arch, real_batch):
    grays, y = real_batch
    size = SIZE[arch]
    built = architectures.build(arch, size, 4)
    m = built.model
    assert _is_flat(m), f"{arch} nests a model: CAM tools could not reach its conv layers"
    assert m.get_layer("logits") and m.get_layer("probabilities")
    assert len(m.get_layer(built.last_conv_layer).output.shape) == 4
    x = Preprocessing(image_size=size).batch(grays)
    m.compile(keras.optimizers.SGD(1e-3), "sparse_categorical_crossentropy")
    loss = m.train_on_batch(x, y)
    assert np.isfinite(loss)
    p = m.predict(x, verbose=0)
    assert p.shape == (len(y), 4) and np.allclose(p.sum(1), 1, atol=1e-5)


def test_two_stage_and_view_networks():
    view = architectures.view_classifier("plane_cnn", 64)
    assert view.model.get_layer("view_features").output.shape[-1] == architectures.VIEW_FEATURES
    tumor = architectures.build("xai_cnn", 64, 4, extra_input=True)
    assert [t.shape[-1] for t in tumor.model.inputs] == [1, architectures.VIEW_FEATURES]


def test_unknown_and_impossible_requests():
    with pytest.raises(ValueError, match="unknown architecture"):
        architectures.build("alexnet", 64, 4)
    with pytest.raises(ValueError, match="no ImageNet weights"):
        architectures.build("xai_cnn", 64, 4, weights="imagenet")

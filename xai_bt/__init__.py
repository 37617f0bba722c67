"""xai_bt: explainability-first brain-tumor MRI classification.

The flat public API (imported lazily, so `import xai_bt` stays fast and TensorFlow-free):

    model = xai_bt.load_model("models/default")
    pred = xai_bt.predict(model, ["scan.jpg"])
    maps = xai_bt.explain(model, ["scan.jpg"], methods=["gradcam", "smoothgrad"])
    run = xai_bt.explain_files(model, ["archive/"], "explanations/", resume=True)   # run.failures

The package follows the data flow: data/ (scans in), model/ (the bundle), attribution/ (the methods),
evaluation/ and audit/ (honest numbers, focus), plots/ (drawing only), review/ (pages), io/ (files at
archive scale), cli/ (the commands); see docs/architecture.md.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_model": "model.bundle", "Bundle": "model.bundle", "Prediction": "model.bundle",
    "default_model_path": "model.bundle", "save_bundle": "model.bundle",
    "Preprocessing": "model.preprocessing",
    "read_image": "data.decode", "read_mask": "data.decode",
    "load_dataset": "data.datasets",
    "Sample": "data.sample", "ImageError": "data.sample", "CLASS_NAMES": "data.sample", "PLANES": "data.sample",
    "build_model": ("model.architectures", "build"), "ARCHITECTURES": "model.architectures",
    "train": ("model.training", "train"), "TrainConfig": "model.training",
    "evaluate": ("evaluation.evaluate", "evaluate_bundle"),
    "explain": ("attribution.explain", "explain"), "METHODS": "attribution.registry",
    "explain_files": "io.explain_files", "ExplainResult": "io.explain_files", "predict_files": "io.predict_files",
    "MethodSpec": "attribution.registry", "register_method": ("attribution.registry", "register"),
}

__all__ = sorted(_API) + ["predict", "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'xai_bt' has no attribute {name!r}")
    target = _API[name]
    module, attr = target if isinstance(target, tuple) else (target, name)
    return getattr(importlib.import_module(f".{module}", __name__), attr)


def predict(model, images, batch_size: int = 64, calibrated: bool = True):
    """Class probabilities for paths or arrays with a loaded bundle (or a bundle path)."""
    from xai_bt.model.bundle import Bundle, load_model

    bundle = model if isinstance(model, Bundle) else load_model(model)
    return bundle.predict(images, batch_size=batch_size, calibrated=calibrated)

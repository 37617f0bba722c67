"""Predictions for many scan files, batch by batch: a file that cannot be read is listed as a failure, not
raised, and the other files are still predicted (what `python -m xai_bt predict` runs)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = ["PredictResult", "predict_files"]


@dataclass
class PredictResult:
    """Rows of the scans predicted (path, prediction, confidence, probabilities and, for models with a view
    classifier, view and view_probabilities) and of those that failed (path, error), in file order."""

    model: str
    results: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The JSON document `predict --json` writes."""
        return {"model": self.model, "results": self.results, "failures": self.failures}


def predict_files(model, files: Sequence[str | os.PathLike], *, batch_size: int = 32, calibrated: bool = True,
                  on_scan: Callable[[dict[str, Any]], None] | None = None) -> PredictResult:
    """Predict each file in `files` with `model` (a Bundle or a bundle path), `batch_size` at a time.
    `on_scan` hears of every row (a result, or a failure with an 'error' key) as soon as it is known."""
    import numpy as np

    from xai_bt.data.sample import ImageError
    from xai_bt.model.bundle import Bundle, iter_batches, load_model

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    bundle = model if isinstance(model, Bundle) else load_model(model)
    tell = on_scan or (lambda row: None)
    out = PredictResult(str(bundle.path))
    for batch in iter_batches([os.fspath(f) for f in files], batch_size):
        ok, grays = [], []
        for f in batch:
            try:
                grays.append(bundle.prepare(f))
                ok.append(f)
            except ImageError as e:
                out.failures.append({"path": f, "error": e.problem})
                tell(out.failures[-1])
        if not ok:
            continue
        pred = bundle.predict_prepared(np.concatenate(grays), calibrated=calibrated)
        for i, f in enumerate(ok):
            row = {"path": f, "prediction": pred.labels[i], "confidence": float(pred.confidence[i]),
                   "probabilities": dict(zip(pred.class_names, map(float, pred.probabilities[i])))}
            if pred.view_probabilities is not None:
                row["view"] = pred.views[i]
                row["view_probabilities"] = dict(zip(pred.view_names, map(float, pred.view_probabilities[i])))
            out.results.append(row)
            tell(row)
    return out

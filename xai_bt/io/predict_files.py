"""Predictions for many scan files, batch by batch: a file that cannot be read is listed as a failure, not
raised, and the other files are still predicted (what `python -m xai_bt predict` runs). Every result row
carries the competence warnings of its scan (`xai_bt.model.competence`): an empty list when it looks like
the scans the model learnt from."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = ["PredictResult", "predict_files"]


@dataclass
class PredictResult:
    """Rows of the scans predicted (path, prediction, confidence, probabilities, warnings and, for models with
    a view classifier, view and view_probabilities) and of those that failed (path, error), in file order."""

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
    from xai_bt.model.bundle import Bundle, iter_batches, load_model

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    bundle = model if isinstance(model, Bundle) else load_model(model)
    tell = on_scan or (lambda row: None)
    out = PredictResult(str(bundle.path))
    for batch in iter_batches([os.fspath(f) for f in files], batch_size):
        ok, inputs, notes = _read_batch(bundle, batch, out, tell)
        if ok:
            for row in _predict_batch(bundle, ok, inputs, notes, calibrated):
                out.results.append(row)
                tell(row)
    return out


def _read_batch(bundle, batch: list[str], out: PredictResult, tell: Callable[[dict[str, Any]], None]):
    """Decode a batch: the files that read, their model inputs and image-check warnings; failures recorded."""
    from xai_bt.data.sample import ImageError
    from xai_bt.model.competence import decode_scan, scan_warnings

    ok, inputs, notes = [], [], []
    for f in batch:
        try:
            gray, rgb = decode_scan(f)
            inputs.append(bundle.prepare(gray))
        except ImageError as e:
            out.failures.append({"path": f, "error": e.problem})
            tell(out.failures[-1])
            continue
        ok.append(f)
        notes.append(scan_warnings(gray, rgb))
    return ok, inputs, notes


def _predict_batch(bundle, files: list[str], inputs: list, notes: list[list[str]], calibrated: bool
                   ) -> list[dict[str, Any]]:
    """Result rows of one decoded batch; a fitted bundle's feature check rides on the prediction's own pass."""
    import numpy as np

    from xai_bt.model import competence

    x = np.concatenate(inputs)
    if competence.has_feature_check(bundle):
        feats, known, views = competence.network_outputs(bundle, x)
        pred = bundle.predict_prepared(x, calibrated=calibrated, view_vectors=views, known_logits=known)
        notes = [n + w for n, w in zip(notes, competence.feature_warnings(bundle, feats))]
    else:
        pred = bundle.predict_prepared(x, calibrated=calibrated)
    rows = []
    for i, f in enumerate(files):
        row = {"path": f, "prediction": pred.labels[i], "confidence": float(pred.confidence[i]),
               "probabilities": dict(zip(pred.class_names, map(float, pred.probabilities[i])))}
        if pred.view_probabilities is not None:
            row["view"] = pred.views[i]
            row["view_probabilities"] = dict(zip(pred.view_names, map(float, pred.view_probabilities[i])))
        row["warnings"] = notes[i]
        rows.append(row)
    return rows

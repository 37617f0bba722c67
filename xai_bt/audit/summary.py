"""summary.json of the focus audit, computed once from the score rows however a sink stored them.

The rows become per-scan columns in audit order (so the bootstrap resamples, and thus the CIs, do not depend
on the order rows were written in), then means with bootstrap 95% CIs overall and per class, plane and
correctness (:func:`xai_bt.audit.localisation.summarise`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from xai_bt.audit.localisation import summarise
from xai_bt.audit.measure import MAP_SCORES, ROAD_PERCENTAGES

__all__ = ["BOOTSTRAP_RESAMPLES", "Columns", "build_summary", "read_columns", "summarise_scores"]

BOOTSTRAP_RESAMPLES = 1000


@dataclass
class Columns:
    """Per-scan values of the audited scans (every method's row present), in audit order."""

    positions: list[int]  # each scan's position in the candidate list
    label: list[str]
    plane: list[str]
    target: list[str]
    prediction: list[str]
    mask_source: list[str]
    correct: np.ndarray
    confidence: np.ndarray
    mask_fraction: np.ndarray
    scores: dict[str, dict[str, np.ndarray]]  # method -> score -> (n,)

    def __len__(self) -> int:
        return len(self.positions)


def read_columns(rows: Iterable[dict[str, Any]], order: dict[str, int], methods: Sequence[str]) -> Columns:
    """Columns from score rows (numbers, or the CSV's text) of the scans in `order` (path -> position), read
    row by row; a scan counts when it has a row for every method."""
    per: dict[int, dict[str, Any]] = {}
    for r in rows:
        j = order.get(r["path"])
        if j is None or r["method"] not in methods:
            continue
        entry = per.setdefault(j, {"base": r, "scores": {}})
        entry["scores"][r["method"]] = [_number(r[k]) for k in MAP_SCORES]
    positions = sorted(j for j, e in per.items() if set(methods) <= set(e["scores"]))
    base = [per[j]["base"] for j in positions]
    return Columns(
        positions=positions,
        **{k: [str(b[k]) for b in base] for k in ("label", "plane", "target", "prediction", "mask_source")},
        correct=np.array([str(b["correct"]) == "True" for b in base], bool),
        confidence=np.array([_number(b["confidence"]) for b in base], float),
        mask_fraction=np.array([_number(b["mask_fraction"]) for b in base], float),
        scores={m: {k: np.array([per[j]["scores"][m][c] for j in positions], float) for c, k in enumerate(MAP_SCORES)}
                for m in methods})


def _number(v: Any) -> float:
    """A row's value as a float: NaN for an undefined one (empty in the CSV)."""
    return np.nan if v is None or v == "" else float(v)


def summarise_scores(scores: dict[str, np.ndarray], groups: dict[str, Sequence[str]],
                     n_boot: int = BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """Means with bootstrap 95% CIs overall ("all") and per grouping (e.g. "by_class": labels)."""
    out: dict[str, Any] = {"all": summarise(scores, n_boot=n_boot)["all"]}
    for name, labels in groups.items():
        per = summarise(scores, groups=labels, n_boot=n_boot)
        per.pop("all")
        out[name] = dict(sorted(per.items()))
    return out


def build_summary(bundle, data: str, names: Sequence[str], cols: Columns, *, methods: Sequence[str],
                  layer: str | None, target: str, selection: dict[str, Any], unseen_text: str,
                  faith: dict[str, dict[str, np.ndarray]], curves: dict[str, Any], sanity_result: Any,
                  settings: dict[str, Any]) -> dict[str, Any]:
    """summary.json, less timings: the run's settings and selection, and every score's mean and CI."""
    groups = {"by_class": cols.label, "by_plane": [p or "unknown" for p in cols.plane],
              "by_prediction": ["correct" if c else "wrong" for c in cols.correct]}
    return {
        "model": str(bundle.path), "model_name": bundle.name, "temperature": bundle.temperature,
        "data": str(data), "classes": list(names),
        "input_size": bundle.preprocessing.image_size, "cam_layer": layer, "target": target,
        "methods": list(methods), "n_images": len(cols), "selection": selection,
        "unseen_definition": unseen_text, "accuracy": float(cols.correct.mean()),
        "mask_sources": {k: cols.mask_source.count(k) for k in sorted(set(cols.mask_source))},
        "settings": {"tolerance_px": settings["tolerance_px"], "top_k": settings["top_k"],
                     "bootstrap_resamples": BOOTSTRAP_RESAMPLES, "ci": 0.95,
                     "faithfulness_images": settings["faithfulness_images"],
                     "road_percentages": list(ROAD_PERCENTAGES), "sanity_images": settings["sanity_images"],
                     "limit": settings["limit"], "seed": settings["seed"]},
        "chance": summarise_scores({"mask_fraction": cols.mask_fraction}, groups),
        "scores": {m: summarise_scores(cols.scores[m], groups) for m in methods},
        "faithfulness": {m: {"summary": summarise_scores(faith[m], {})["all"], "curves": curves[m]} for m in faith},
        "sanity": sanity_result,
    }

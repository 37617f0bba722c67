"""summary.json of the focus audit, computed once from the score rows however a sink stored them.

The rows become per-scan columns in audit order (so the bootstrap resamples, and thus the CIs, do not depend
on the order rows were written in), then means with bootstrap 95% CIs overall and per class, plane and
correctness (:func:`xai_bt.audit.localisation.summarise`). :func:`gallery_picks` chooses the gallery's best,
typical and worst scans; :func:`coinciding_methods` finds methods whose every summary number agrees.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from xai_bt.audit.localisation import summarise
from xai_bt.audit.measure import MAP_SCORES, ROAD_PERCENTAGES

__all__ = ["BOOTSTRAP_RESAMPLES", "GALLERY_KINDS", "Columns", "build_summary", "coinciding_methods", "gallery_picks",
           "read_columns", "summarise_scores"]

BOOTSTRAP_RESAMPLES = 1000
#: The gallery's rows, in page order: highest energy, around the median, lowest.
GALLERY_KINDS = ("best", "typical", "worst")


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


def summarise_scores(scores: dict[str, np.ndarray], groups: Mapping[str, Sequence[str]],
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


# --------------------------------------------------------------------------------------------- gallery
def gallery_picks(energy: np.ndarray, size: int) -> list[tuple[str, int]]:
    """(kind, scan index) of the `size` best, typical (nearest the median rank) and worst scans by energy,
    NaN left out; no scan twice, so with fewer than 3 x `size` scans the typical row is what is left between."""
    valid = np.flatnonzero(np.isfinite(energy))
    order = valid[np.argsort(-energy[valid], kind="stable")]          # best first
    n = len(order)
    best = list(range(min(size, n)))
    worst = [r for r in range(n - 1, -1, -1) if r not in best][:size]
    middle = (n - 1) / 2
    rest = sorted((r for r in range(n) if r not in best and r not in worst), key=lambda r: (abs(r - middle), r))
    typical = sorted(rest[:size])
    return ([("best", int(order[r])) for r in best] + [("typical", int(order[r])) for r in typical]
            + [("worst", int(order[r])) for r in worst])


# ------------------------------------------------------------------------------------ equal methods
def coinciding_methods(summary: dict[str, Any], tolerance: float = 1e-3) -> list[tuple[str, str, float]]:
    """Pairs (a, b, largest difference) of methods, in summary order, whose every localisation mean (overall
    and per group), faithfulness mean and randomisation step agree within `tolerance`: one method twice."""
    numbers = {m: _method_numbers(summary, m) for m in summary["methods"]}
    pairs = []
    for i, a in enumerate(summary["methods"]):
        for b in summary["methods"][i + 1:]:
            if numbers[a].keys() != numbers[b].keys() or not numbers[a]:
                continue
            gap = max(abs(numbers[a][k] - numbers[b][k]) for k in numbers[a])
            if gap <= tolerance:
                pairs.append((a, b, gap))
    return pairs


def _method_numbers(summary: dict[str, Any], method: str) -> dict[tuple[str, ...], float]:
    """Every defined summary number of one method, keyed by where it sits (group, entry, statistic)."""
    out: dict[tuple[str, ...], float] = {}
    for group, block in summary["scores"][method].items():
        entries = {"": block} if group == "all" else block
        for key, scores in entries.items():
            for name, e in scores.items():
                if e.get("mean") is not None:
                    out[(group, key, name)] = float(e["mean"])
    faith = (summary.get("faithfulness") or {}).get(method)
    for name, e in (faith or {}).get("summary", {}).items():
        if e.get("mean") is not None:
            out[("faithfulness", name)] = float(e["mean"])
    sanity = ((summary.get("sanity") or {}).get("methods") or {}).get(method)
    for step in (sanity or {}).get("steps", []):
        if step.get("spearman") is not None:
            out[("sanity", step["layer"])] = float(step["spearman"])
    return out

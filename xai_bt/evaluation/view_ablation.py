"""View-feature ablation of the two-stage model: how much does the tumor classifier lean on the view vector?

The tumor network of a two-stage bundle sees the image and the 128-d `view_features` vector of the view
network. Replacing that vector (by zeros, by the dataset mean, by the mean vector of one plane, or by
another image's vector) and predicting again shows whether the plane information is used at all, and for
which classes and planes. This module computes; `xai_bt.plots.view_ablation.plot_view_ablation` draws the
result (as in scikit-learn), so notebooks can tabulate the numbers without drawing.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Conditions every ablation has; `mean_<plane>` conditions follow for each plane with images.
BASE_CONDITIONS = ("intact", "zeroed", "dataset_mean")
SHUFFLED = "shuffled"


def view_ablation(bundle, x, y_true: Sequence[int | str] | None = None,
                  planes: Sequence[int | str] | None = None, seed: int = 0, batch_size: int = 64) -> dict[str, Any]:
    """Tumor predictions of a two-stage `bundle` on `x` under replaced view vectors.

    x: a prepared batch (N, S, S, 1) or anything `bundle.prepare` takes. y_true: true classes (names or
    indices), for accuracy. planes: true planes (names or indices); without them images are grouped by
    the view network's own prediction (the result's `plane_source` says which).

    Conditions: "intact" (the model as deployed; equals `bundle.predict_prepared`), "zeroed",
    "dataset_mean" (mean vector of `x`), "mean_<plane>" (mean vector of the images of that plane, given to
    every image), "shuffled" (each image gets another image's vector; a seeded derangement).

    Returns a dict: `conditions`, `probabilities` {condition: (N, C)}, `rows` (one per image and
    condition), `by_class` and `by_plane` (accuracy or agreement, mean confidence, change vs intact per
    group and condition), plus `class_names`, `view_names`, `plane_source`, `seed`.
    """
    if bundle.kind != "two_stage":
        raise ValueError(f"view ablation needs a two-stage bundle; {bundle.name!r} is {bundle.kind!r}")
    x = bundle.prepare(x)
    vectors = bundle.view_features(x, batch_size)
    intact = bundle.predict_prepared(x, batch_size=batch_size)
    view_names = tuple(bundle.view_names or intact.view_names)
    if planes is None:
        plane_idx, plane_source = intact.view_probabilities.argmax(1), "predicted"
    else:
        plane_idx, plane_source = _indices(planes, view_names, "plane"), "labelled"
    truth = None if y_true is None else _indices(y_true, bundle.class_names, "class")
    replaced = replacement_vectors(vectors, plane_idx, view_names, seed)
    probs = {"intact": intact.probabilities}
    for name, vv in replaced.items():
        probs[name] = bundle.predict_prepared(x, batch_size=batch_size, view_vectors=vv).probabilities
    rows = _rows(probs, truth, plane_idx, bundle.class_names, view_names)
    class_key = "true_class" if truth is not None else "intact_prediction"
    return {
        "conditions": list(probs), "probabilities": probs, "rows": rows,
        "by_class": summarise(rows, class_key), "by_plane": summarise(rows, "plane"),
        "class_names": bundle.class_names, "view_names": view_names,
        "class_source": "labelled" if truth is not None else "predicted", "plane_source": plane_source,
        "seed": seed,
    }


def replacement_vectors(vectors: np.ndarray, plane_idx: np.ndarray, view_names: Sequence[str],
                        seed: int = 0) -> dict[str, np.ndarray]:
    """The view vectors of every ablated condition (all but "intact"), each shaped like `vectors`."""
    n = len(vectors)
    out = {"zeroed": np.zeros_like(vectors),
           "dataset_mean": np.broadcast_to(vectors.mean(0), vectors.shape).copy()}
    for p, name in enumerate(view_names):
        if np.any(plane_idx == p):
            out[f"mean_{name}"] = np.broadcast_to(vectors[plane_idx == p].mean(0), vectors.shape).copy()
    if n > 1:
        out[SHUFFLED] = vectors[derangement(n, seed)]
    return out


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A seeded permutation with no fixed point (n > 1): image i gets the vector of image out[i] != i."""
    perm = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=int)
    out[perm] = np.roll(perm, 1)
    return out


def _indices(values: Sequence[int | str], names: Sequence[str], what: str) -> np.ndarray:
    """Names or indices -> int array, with a clear error for a name the model does not know."""
    out = []
    for v in values:
        if isinstance(v, (int, np.integer)):
            out.append(int(v))
        elif v in names:
            out.append(list(names).index(v))
        else:
            raise ValueError(f"unknown {what} {v!r}; expected one of {', '.join(names)}")
    return np.asarray(out, dtype=int)


def _rows(probs: dict[str, np.ndarray], truth: np.ndarray | None, plane_idx: np.ndarray,
          class_names: Sequence[str], view_names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per image and condition: prediction, confidence, change vs intact, correctness."""
    base = probs["intact"].argmax(1)
    rows = []
    for condition, p in probs.items():
        pred = p.argmax(1)
        for i in range(len(p)):
            rows.append({
                "index": i, "condition": condition,
                "prediction": class_names[pred[i]], "confidence": float(p[i, pred[i]]),
                "intact_prediction": class_names[base[i]], "changed": bool(pred[i] != base[i]),
                "true_class": None if truth is None else class_names[truth[i]],
                "correct": None if truth is None else bool(pred[i] == truth[i]),
                "plane": view_names[plane_idx[i]],
                "own_plane": condition == f"mean_{view_names[plane_idx[i]]}",
            })
    return rows


def summarise(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Per group of `key` (and "all") and condition: n, accuracy (if labelled), agreement with the intact
    prediction, mean confidence, and the change of accuracy, agreement and confidence against "intact"."""
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    groups = ["all"] + sorted({r[key] for r in rows})
    table = []
    for group in groups:
        stats = {c: _stats([r for r in rows if r["condition"] == c and group in ("all", r[key])])
                 for c in conditions}
        for c in conditions:
            s = stats[c]
            acc, acc0 = s["accuracy"], stats["intact"]["accuracy"]
            table.append({"group": group, "condition": c, **s,
                          "accuracy_change": None if acc is None else acc - acc0,
                          "agreement_change": s["agreement"] - stats["intact"]["agreement"],
                          "confidence_change": s["mean_confidence"] - stats["intact"]["mean_confidence"]})
    return table


def _stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """n, accuracy (None without labels), agreement with intact, mean confidence of a set of rows."""
    correct = [r["correct"] for r in rows if r["correct"] is not None]
    return {"n": len(rows),
            "accuracy": float(np.mean(correct)) if correct else None,
            "agreement": float(np.mean([not r["changed"] for r in rows])),
            "mean_confidence": float(np.mean([r["confidence"] for r in rows]))}

"""Leakage-free splits and the leakage audit.

A split is leakage-free when no twin (a near-duplicate as it is, mirrored, flipped or turned: the one
definition in `xai_bt.data.twins`) and no patient sits on two sides. `leakage_free` marks the images of a given test set
that have no such twin in a reference set; `make_split` / `split_training` build new group-aware,
class-stratified splits; `audit` measures how much an existing split leaks.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from collections import Counter
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from xai_bt.data.sample import Sample
from xai_bt.data.twins import (
    TWIN_THRESHOLD,
    TWIN_TRANSFORMS,
    best_matches,
    best_matches_by_transform,
    exact_duplicate_groups,
    fingerprints,
    groups_from_pairs,
    similar_pairs,
    thumbnails,
)

SPLIT_COLUMNS = ("path", "label", "split", "group", "patient_id", "plane")
#: Extra thresholds at which the audit counts test images with a twin in train.
REPORT_THRESHOLDS = (0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
#: Bin edges of the nearest-neighbour r histogram in the audit (r below the first edge counts in the first
#: bin): fine enough near 1 to show the valley between copies and distinct scans.
HISTOGRAM_EDGES = tuple(round(0.9 + 0.005 * k, 3) for k in range(21))
_TEST_NAMES = {"test", "testing"}
_TRAIN_NAMES = {"train", "training"}


def _thumbs(samples: Sequence[Sample], thumbs: np.ndarray | None, cache_dir: str | Path | None) -> np.ndarray:
    """Precomputed thumbnails if given (checked for length), else computed with the cache."""
    if thumbs is None:
        return thumbnails(samples, cache_dir=cache_dir)
    if len(thumbs) != len(samples):
        raise ValueError(f"{len(thumbs)} thumbnails given for {len(samples)} samples")
    return thumbs


def max_similarity(samples: Sequence[Sample], reference: Sequence[Sample], *, thumbs: np.ndarray | None = None,
                   reference_thumbs: np.ndarray | None = None, cache_dir: str | Path | None = None) -> np.ndarray:
    """Highest Pearson r of each sample's thumbnail against any `reference` image under any twin
    transform (NaN if unreadable), so that reports can count leaks at any threshold."""
    a = _thumbs(samples, thumbs, cache_dir)
    b = _thumbs(reference, reference_thumbs, cache_dir)
    return best_matches(a, b)[0]


def leakage_free(samples: Sequence[Sample], reference: Sequence[Sample], threshold: float = TWIN_THRESHOLD, *,
                 thumbs: np.ndarray | None = None, reference_thumbs: np.ndarray | None = None,
                 cache_dir: str | Path | None = None, similarity: np.ndarray | None = None) -> list[bool]:
    """True for each sample with no twin (r >= threshold as it is, mirrored, flipped or turned) and no
    shared patient id in `reference`. `similarity`: the samples' `max_similarity` to `reference` when the
    caller already has it (it is not computed again).

    This defines the project's "leakage-free test set" (e.g. official Testing vs Training). Unreadable
    samples cannot be checked and are False."""
    best = similarity if similarity is not None else max_similarity(
        samples, reference, thumbs=thumbs, reference_thumbs=reference_thumbs, cache_dir=cache_dir)
    if len(best) != len(samples):
        raise ValueError(f"{len(best)} similarities given for {len(samples)} samples")
    ref_patients = {s.patient_id for s in reference if s.patient_id}
    return [bool(r < threshold) and not (s.patient_id and s.patient_id in ref_patients)
            for s, r in zip(samples, best)]


def split_groups(samples: Sequence[Sample], threshold: float = TWIN_THRESHOLD, *, thumbs: np.ndarray | None = None,
                 cache_dir: str | Path | None = None) -> np.ndarray:
    """Group id per sample that a split must keep whole: chains of twins (mirrored ones too) plus shared
    patient ids."""
    t = _thumbs(samples, thumbs, cache_dir)
    return groups_from_pairs(len(samples), similar_pairs(t, threshold=threshold),
                             link_by=[s.patient_id for s in samples])


def _group_split(labels: Sequence[str | None], groups: np.ndarray, fractions: Sequence[float],
                 names: Sequence[str], seed: int) -> list[str]:
    """Assign whole groups to `names` in about `fractions`, stratified by label.

    Greedy: groups in random order (largest first) each go to the part whose per-class quota is least
    filled for the group's classes. Unlike StratifiedGroupKFold this hits arbitrary fractions, not 1/k,
    and takes well under a second for thousands of groups (sklearn's takes tens of seconds here)."""
    if len(fractions) != len(names) or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions {tuple(fractions)} must be {len(names)} non-negative numbers summing to 1")
    _, y = np.unique(np.array([lab or "?" for lab in labels]), return_inverse=True)
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    n_groups, n_parts = int(g.max(initial=-1)) + 1, sum(f > 0 for f in fractions)
    if n_groups < n_parts:
        raise ValueError(f"{n_groups} group(s) cannot fill {n_parts} parts")
    counts = np.zeros((n_groups, int(y.max()) + 1))
    np.add.at(counts, (g, y), 1)
    frac = np.asarray(fractions, float)
    target = np.outer(np.where(frac > 0, frac, 1.0), counts.sum(axis=0))
    have = np.zeros_like(target)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_groups)
    order = order[np.argsort(-counts.sum(axis=1)[order], kind="stable")]
    part = np.empty(n_groups, np.int64)
    for k in order:
        need = ((target - have) / target) @ counts[k] + rng.random(len(frac)) * 1e-9  # random tie-break
        need[frac == 0] = -np.inf
        part[k] = int(np.argmax(need))
        have[part[k]] += counts[k]
    return [names[p] for p in part[g]]


def make_split(samples: Sequence[Sample], fractions: Sequence[float] = (0.7, 0.15, 0.15),
               threshold: float = TWIN_THRESHOLD,
               seed: int = 0, *, groups: np.ndarray | None = None, cache_dir: str | Path | None = None) -> list[str]:
    """"train"/"val"/"test" per sample (or "train"/"test" for two fractions), stratified by class, with
    every near-duplicate group and every patient on one side. `groups` defaults to `split_groups`."""
    names = {3: ("train", "val", "test"), 2: ("train", "test")}.get(len(fractions))
    if names is None:
        raise ValueError(f"fractions must have 2 or 3 entries, got {tuple(fractions)}")
    if groups is None:
        groups = split_groups(samples, threshold, cache_dir=cache_dir)
    return _group_split([s.label for s in samples], np.asarray(groups), fractions, names, seed)


def split_training(samples: Sequence[Sample], val_fraction: float = 0.15, threshold: float = TWIN_THRESHOLD,
                   seed: int = 0,
                   *, groups: np.ndarray | None = None, cache_dir: str | Path | None = None) -> list[str]:
    """"train"/"val" per sample of an official training split, keeping near-duplicate groups and patients
    whole, so that validation scores are not inflated by twins in train."""
    if groups is None:
        groups = split_groups(samples, threshold, cache_dir=cache_dir)
    return _group_split([s.label for s in samples], np.asarray(groups), (1 - val_fraction, val_fraction),
                        ("train", "val"), seed)


def split_training_apart_from(samples: Sequence[Sample], keep_in_train: Sequence[bool], val_fraction: float = 0.15,
                              threshold: float = TWIN_THRESHOLD, seed: int = 0, *,
                              cache_dir: str | Path | None = None) -> list[str]:
    """Like :func:`split_training`, but every twin group holding a scan marked in ``keep_in_train`` (e.g. the
    twins of the test scans) stays in train, and validation (about ``val_fraction`` of all samples) is
    carved from the other groups: validation then shares no twin with the test set, so choices made on it
    are not choices made on test scans."""
    groups = np.asarray(split_groups(samples, threshold, cache_dir=cache_dir))
    pinned = {int(g) for g, k in zip(groups, keep_in_train) if k}
    free = [i for i, g in enumerate(groups) if int(g) not in pinned]
    out = ["train"] * len(samples)
    if not free:
        raise ValueError("every training scan is in a twin group pinned to train; no validation can be carved")
    fraction = min(1.0, val_fraction * len(samples) / len(free))
    for i, part in zip(free, _group_split([samples[i].label for i in free], groups[free], (1 - fraction, fraction),
                                          ("train", "val"), seed)):
        out[i] = part
    return out


def write_split_csv(path: str | Path, samples: Sequence[Sample], splits: Sequence[str], groups: Sequence[int],
                    overwrite: bool = False, root: str | Path | None = None) -> Path:
    """Write `path,label,split,group,patient_id,plane` rows; refuses to replace an existing file unless
    `overwrite`, so a published split is not silently changed. With `root`, paths are written relative
    to it (as in a bundle's split.csv), so the file can be shipped and used from anywhere."""
    path = Path(path)
    if len(splits) != len(samples) or len(groups) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(splits)} splits and {len(groups)} groups")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(SPLIT_COLUMNS)
        for s, sp, g in zip(samples, splits, groups):
            where = Path(os.path.relpath(s.path, root)).as_posix() if root is not None else s.path
            w.writerow([where, s.label or "", sp, int(g), s.patient_id or "", s.plane or ""])
    return path


def read_split_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a split CSV as dicts with the SPLIT_COLUMNS keys: `group` an int, empty fields None."""
    path = Path(path)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = set(SPLIT_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: not a split CSV, missing column(s) {', '.join(sorted(missing))}")
        return [{k: int(row[k]) if k == "group" else (row[k] or None) for k in SPLIT_COLUMNS} for row in reader]


# ----------------------------------------------------------------------------------------------- audit

def _role(split: str, names: set[str]) -> str | None:
    """Prefix of a split name (`brisc2025:train` -> `brisc2025`) if its last part is in `names`."""
    prefix, _, base = split.rpartition(":")
    return prefix if base.lower() in names else None


def _leak_pairs(split_names: Sequence[str]) -> list[tuple[str, str]]:
    """(test-like, train-like) split pairs from the same dataset, for the headline leakage figure."""
    tests = {p: s for s in split_names if (p := _role(s, _TEST_NAMES)) is not None}
    trains = {p: s for s in split_names if (p := _role(s, _TRAIN_NAMES)) is not None}
    return [(tests[p], trains[p]) for p in tests if p in trains]


def _conflicts(members: list[list[int]], values: Sequence[str | None], samples: Sequence[Sample],
               examples: int) -> dict[str, Any]:
    """Groups whose members carry more than one distinct non-empty value (label or plane); each example
    gives the group's size, its count per value and one path per value."""
    bad = [ix for ix in members if len({values[i] for i in ix if values[i]}) > 1]
    return {"groups": len(bad), "images": sum(map(len, bad)),
            "examples": [{"size": len(ix), "counts": dict(Counter(values[i] or "unknown" for i in ix)),
                          "paths": {values[i] or "unknown": samples[i].path for i in reversed(ix)}}
                         for ix in bad[:examples]]}


def _components(n: int, pairs: list[tuple[int, int, float]]) -> list[list[int]]:
    """Index lists of the connected components with two or more members."""
    labels = groups_from_pairs(n, pairs)
    comps: dict[int, list[int]] = {}
    for i, g in enumerate(labels):
        comps.setdefault(int(g), []).append(i)
    return [c for c in comps.values() if len(c) > 1]


def _spread(items: list, k: int) -> list:
    """Up to k items evenly spaced through `items` (sorted by r: shows the whole range, not just r = 1)."""
    if len(items) <= k:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, k).round()]


def histogram(r: np.ndarray, edges: Sequence[float] = HISTOGRAM_EDGES) -> list[int]:
    """Counts of nearest-neighbour r per bin of `edges`; r below the first edge goes in the first bin, NaN
    (unreadable) nowhere."""
    r = np.asarray(r, float)
    r = np.clip(r[np.isfinite(r)], edges[0], edges[-1])
    return np.histogram(r, np.asarray(edges))[0].tolist()


def _leak(test: str, train: str, splits: list[str], thumbs: np.ndarray, threshold: float) -> dict[str, Any]:
    """Test images of `test` with a twin in `train`: in all, per kind (as it is, mirrored, ...), by
    threshold, and the histogram of nearest-neighbour r as it is and mirrored."""
    ti = [i for i, sp in enumerate(splits) if sp == test]
    ri = [i for i, sp in enumerate(splits) if sp == train]
    per = {k: v[0] for k, v in best_matches_by_transform(thumbs[ti], thumbs[ri]).items()}
    best = np.max(np.stack(list(per.values())), axis=0)
    counts = {f"{t:g}": int(np.sum(best >= t)) for t in sorted({*REPORT_THRESHOLDS, threshold})}
    return {"split": test, "reference": train, "of": len(ti), "n": int(np.sum(best >= threshold)),
            "by_kind": {k: int(np.sum(r >= threshold)) for k, r in per.items()},
            "only_by_kind": {k: int(np.sum((r >= threshold) & (per["identity"] < threshold)))
                             for k, r in per.items() if k != "identity"},
            "by_threshold": counts,
            "histogram": {"edges": list(HISTOGRAM_EDGES),
                          **{k: histogram(r) for k, r in per.items() if k in ("identity", "mirror_lr")},
                          "any": histogram(best)}}


def audit(samples: Sequence[Sample], threshold: float = TWIN_THRESHOLD, examples: int = 10, *,
          thumbs: np.ndarray | None = None, digests: Sequence[str | None] | None = None,
          cache_dir: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Leakage report of a labelled split (JSON-ready): twin pairs and groups within and across splits,
    test images with a twin in train (the headline: in all and per kind, as it is or mirrored, with the
    nearest-neighbour histogram), byte-identical files, label and plane conflicts inside duplicate
    groups, patients on several sides, and example pairs."""
    if thumbs is None or digests is None:
        t, d = fingerprints(samples, cache_dir=cache_dir, progress=progress)
        thumbs, digests = (t if thumbs is None else thumbs), (d if digests is None else digests)
    n = len(samples)
    if len(thumbs) != n or len(digests) != n:
        raise ValueError(f"{len(thumbs)} thumbnails and {len(digests)} digests given for {n} samples")
    splits = [s.split or "all" for s in samples]
    names = sorted(set(splits))
    pairs = similar_pairs(thumbs, threshold=threshold)
    unreadable = np.isnan(thumbs).any(axis=1)

    within: dict[str, Any] = {}
    for name in names:
        wp = [p for p in pairs if splits[p[0]] == name == splits[p[1]]]
        comps = _components(n, wp)
        within[name] = {"images": splits.count(name), "pairs": len(wp), "groups": len(comps),
                        "images_in_groups": sum(map(len, comps))}
    across = []
    for a, b in combinations(names, 2):
        xp = [p for p in pairs if {splits[p[0]], splits[p[1]]} == {a, b}]
        ends = {i for p in xp for i in p[:2]}
        across.append({"a": a, "b": b, "pairs": len(xp),
                       "a_images_with_twin_in_b": sum(splits[i] == a for i in ends),
                       "b_images_with_twin_in_a": sum(splits[i] == b for i in ends)})

    leaks = [_leak(test, train, splits, thumbs, threshold) for test, train in _leak_pairs(names)]

    comps = _components(n, pairs)
    exact = exact_duplicate_groups(digests)
    labels, planes = [s.label for s in samples], [s.plane for s in samples]
    patient_splits: dict[str, set[str]] = {}
    for s, sp in zip(samples, splits):
        if s.patient_id:
            patient_splits.setdefault(s.patient_id, set()).add(sp)

    cross = sorted((p for p in pairs if splits[p[0]] != splits[p[1]]), key=lambda p: p[2]) or \
        sorted(pairs, key=lambda p: p[2])
    return {
        "threshold": threshold,
        "transforms": list(TWIN_TRANSFORMS),
        "n_images": n,
        "splits": dict(Counter(splits)),
        "unreadable": [samples[i].path for i in np.flatnonzero(unreadable)],
        "pairs": len(pairs),
        "groups": {"count": len(comps), "images": sum(map(len, comps)),
                   "largest": max(map(len, comps), default=1),
                   "spanning_splits": sum(len({splits[i] for i in c}) > 1 for c in comps)},
        "within": within,
        "across": across,
        "headline": leaks[0] if leaks else None,
        "leaks": leaks,
        "exact_duplicates": {"groups": len(exact), "images": sum(map(len, exact)),
                             "spanning_splits": sum(len({splits[i] for i in c}) > 1 for c in exact),
                             "label_conflicts": _conflicts(exact, labels, samples, 0)["groups"],
                             "plane_conflicts": _conflicts(exact, planes, samples, 0)["groups"]},
        "label_conflicts": _conflicts(comps, labels, samples, examples),
        "plane_conflicts": _conflicts(comps, planes, samples, examples),
        "patients": {"ids": len(patient_splits),
                     "spanning_splits": sum(len(v) > 1 for v in patient_splits.values())},
        "examples": [{"a": samples[i].path, "b": samples[j].path, "r": round(float(r), 5),
                      "splits": [splits[i], splits[j]], "labels": [labels[i], labels[j]]}
                     for i, j, r in _spread(cross, examples)],
    }


def write_leakage_free_split(path: str | Path, samples: Sequence[Sample], fractions: Sequence[float],
                             threshold: float = TWIN_THRESHOLD, seed: int = 0, *, thumbs: np.ndarray | None = None,
                             digests: Sequence[str | None] | None = None, overwrite: bool = False,
                             root: str | None = None) -> dict[str, Any]:
    """Make a split that keeps every twin group on one side, write it as CSV, and audit it again: the
    summary (path, class counts per split, twin pairs across its splits, groups) for the report."""
    groups = split_groups(samples, threshold, thumbs=thumbs)
    splits = make_split(samples, fractions, threshold, seed, groups=groups)
    written = write_split_csv(path, samples, splits, groups, overwrite=overwrite, root=root)
    relabelled = [dataclasses.replace(s, split=sp) for s, sp in zip(samples, splits)]
    check = audit(relabelled, threshold, 0, thumbs=thumbs, digests=digests)
    by_label = {sp: dict(sorted(Counter(s.label for s, x in zip(samples, splits) if x == sp).items()))
                for sp in sorted(set(splits))}
    return {"path": str(written), "seed": seed, "fractions": list(fractions), "by_label": by_label,
            "pairs_across_splits": sum(a["pairs"] for a in check["across"]), "groups": int(len(set(groups.tolist())))}

"""The shipped benchmark protocol: a pooled split of the 4-class benchmark, leakage-free by construction."""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import BENCHMARK

from xai_bt.data.sample import Sample
from xai_bt.data.splits import read_split_csv
from xai_bt.data.twins import similar_pairs, thumbnails

SPLIT = Path(__file__).resolve().parents[1] / "docs" / "protocol" / "brain-tumor-mri-pooled.csv"


def test_pooled_split_keeps_every_group_on_one_side_and_is_stratified():
    rows = read_split_csv(SPLIT)
    assert len(rows) == 7019 and len({r["path"] for r in rows}) == 7019
    sides = defaultdict(set)
    for r in rows:
        sides[r["group"]].add(r["split"])
    assert all(len(s) == 1 for s in sides.values())
    counts = Counter((r["split"], r["label"]) for r in rows)
    total = Counter(r["label"] for r in rows)
    for part, frac in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        for label, n in total.items():
            assert abs(counts[part, label] / n - frac) < 0.02, (part, label)


@pytest.mark.skipif(not BENCHMARK.is_dir(), reason="shared benchmark data not present")
def test_pooled_split_has_no_twin_across_its_sides():
    """Recomputed from the images: no pair of twins (mirrored ones included) straddles two sides."""
    rows = read_split_csv(SPLIT)
    samples = [Sample(path=str(BENCHMARK / r["path"])) for r in rows]
    side = np.array([r["split"] for r in rows])
    pairs = similar_pairs(thumbnails(samples))
    assert len(pairs) > 5000                       # the benchmark is full of twins ...
    assert not [(i, j) for i, j, _ in pairs if side[i] != side[j]]   # ... and none crosses the split

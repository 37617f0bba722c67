"""The shipped sample scans are unseen: no twin of any kind among the scans the shipped models learnt from."""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import BENCHMARK, DATA, SAMPLES

from xai_bt.data.datasets import load_dataset, sample_image
from xai_bt.data.decode import read_image
from xai_bt.data.sample import CLASS_NAMES, Sample
from xai_bt.data.twins import best_matches, thumbnail, thumbnails

MODELS = Path(__file__).resolve().parents[1] / "models"


def _sources() -> dict[str, str]:
    """sample file -> its source path in the benchmark, from the samples README."""
    text = (SAMPLES / "README.md").read_text()
    return dict(re.findall(r"^\| (\w+\.jpg) \| Brain Tumor MRI Dataset, (\S+) \|", text, re.M))


def test_each_class_has_one_sample_with_a_documented_source():
    sources = _sources()
    assert sorted(sources) == sorted(f"{c}.jpg" for c in CLASS_NAMES)
    assert all(s.startswith("Testing/") for s in sources.values())


@pytest.mark.skipif(not BENCHMARK.is_dir(), reason="shared benchmark data not present")
def test_samples_are_their_sources_and_have_no_twin_among_training_scans():
    from xai_bt.data.twins import TWIN_THRESHOLD

    sources = _sources()
    for name, src in sources.items():      # the shipped file is the documented test scan, pixel for pixel
        assert np.array_equal(read_image(SAMPLES / name), read_image(BENCHMARK / src)), name
    with open(MODELS / "default" / "split.csv", newline="") as fh:
        learnt = [Sample(path=str(BENCHMARK / r["path"])) for r in csv.DictReader(fh) if r["split"] in ("train", "val")]
    assert len(learnt) > 5000
    shipped = [Sample(path=str(SAMPLES / name)) for name in sorted(sources)]
    reference = {"default's train + val": learnt}
    if (DATA / "brisc2025").is_dir():
        reference["BRISC 2025 (the view models)"] = load_dataset(DATA / "brisc2025")
    for what, ref in reference.items():
        r, idx = best_matches(thumbnails(shipped, cache=False), thumbnails(ref))
        for s, v, j in zip(shipped, r, idx):
            assert v < TWIN_THRESHOLD, f"{os.path.basename(s.path)} has a twin in {what}: {ref[j].path} (r = {v:.4f})"


@pytest.mark.skipif(not BENCHMARK.is_dir(), reason="shared benchmark data not present")
def test_the_check_would_catch_a_mirrored_sample():
    """The test above can fail: a mirrored training scan, shipped as a sample, is caught."""
    from xai_bt.data.twins import TWIN_THRESHOLD

    train = Sample(path=str(BENCHMARK / "Training" / "meningioma" / "Tr-me_0689.jpg"))
    mirrored = np.ascontiguousarray(np.fliplr(sample_image(train)))
    r, _ = best_matches(thumbnail(mirrored)[None], thumbnails([train], cache=False))
    r_plain = float(thumbnail(mirrored) @ thumbnails([train], cache=False)[0])
    assert r[0] >= TWIN_THRESHOLD > r_plain

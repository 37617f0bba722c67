"""The prepared-pixels cache: what it returns equals an uncached run, and writers of one key do not collide."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from conftest import SAMPLES

from xai_bt.data.cache import cache_dir, prepare_samples
from xai_bt.data.sample import Sample
from xai_bt.model.preprocessing import Preprocessing


def _samples() -> list[Sample]:
    return [Sample(str(p)) for p in sorted(SAMPLES.glob("*.jpg"))]


def test_cached_pixels_equal_uncached_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("XAI_BT_CACHE", str(tmp_path))
    pre = Preprocessing(image_size=48)
    fresh, errors = prepare_samples(_samples(), pre, use_cache=False, progress=False)
    written, _ = prepare_samples(_samples(), pre, progress=False)
    cached, cached_errors = prepare_samples(_samples(), pre, progress=False)
    assert errors == [] and cached_errors == []
    assert fresh.shape == (4, 48, 48) and fresh.any()
    np.testing.assert_array_equal(written, fresh)
    np.testing.assert_array_equal(cached, fresh)
    assert len(list(cache_dir("prepared").glob("*.npz"))) == 1


def test_writers_of_one_key_at_once_all_succeed_and_leave_no_temporaries(tmp_path, monkeypatch):
    """Two training workers prepare the same scans at the same moment: each writes under its own temporary
    name, so neither finds its file renamed away by the other (the multi-worker failure this guards)."""
    monkeypatch.setenv("XAI_BT_CACHE", str(tmp_path))
    pre = Preprocessing(image_size=40)
    with ThreadPoolExecutor(6) as ex:
        results = list(ex.map(lambda _: prepare_samples(_samples(), pre, workers=1, progress=False)[0], range(6)))
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    names = sorted(p.name for p in cache_dir("prepared").iterdir())
    assert len(names) == 1 and names[0].endswith(".npz") and not names[0].startswith(".")

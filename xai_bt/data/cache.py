"""Decode and preprocess many scans once, with an on-disk cache keyed by files and preprocessing.

Training and evaluation read thousands of scans several times; decoding them is the slow part on a
CPU. The cache holds the preprocessed uint8 pixels (exactly what `Preprocessing.prepare` returns), so a
cached run feeds the model the same pixels as an uncached one.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from xai_bt.data.sample import ImageError, Sample

if TYPE_CHECKING:
    from xai_bt.model.preprocessing import Preprocessing


def cache_dir(kind: str | None = None) -> Path:
    """The project's one cache folder, `$XAI_BT_CACHE` or `~/.cache/xai_bt`, or its subfolder `kind`
    ("prepared" arrays, twin "thumbs")."""
    root = os.environ.get("XAI_BT_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "xai_bt"
    return base / kind if kind else base


def _key(samples: Sequence[Sample], pre: Preprocessing) -> str:
    h = hashlib.sha256(json.dumps(pre.to_dict(), sort_keys=True).encode())
    for s in samples:
        h.update(s.path.encode())
        if s.image is None:
            st = os.stat(s.path)
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        else:
            h.update(hashlib.sha1(np.ascontiguousarray(s.image)).digest())
    return h.hexdigest()[:24]


def prepare_samples(samples: Sequence[Sample], pre: Preprocessing, use_cache: bool = True,
                    workers: int | None = None, progress: bool = True) -> tuple[np.ndarray, list[ImageError]]:
    """(N, S, S) uint8 model pixels for `samples`, and the errors of files that could not be read
    (their rows are zeros; callers drop them by `failed_indices`)."""
    from xai_bt.data.datasets import sample_image

    key = _key(samples, pre)
    path = cache_dir("prepared") / f"{key}.npz"
    if use_cache and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            errors = [ImageError(p, m) for p, m in zip(z["err_path"].tolist(), z["err_msg"].tolist())]
            return z["x"], errors
    s = pre.image_size
    out = np.zeros((len(samples), s, s), np.uint8)
    errors: list[ImageError] = []

    def work(i: int) -> None:
        try:
            out[i] = pre.prepare(sample_image(samples[i]))
        except ImageError as e:
            errors.append(e)

    bar = _progress(len(samples), "preparing scans", progress)
    with ThreadPoolExecutor(workers or min(8, (os.cpu_count() or 2) * 2)) as ex:
        for _ in ex.map(work, range(len(samples))):
            bar.update(1)
    bar.close()
    if use_cache:
        from xai_bt.io.atomic import write_atomic

        # a private temporary name per writer: several processes (multi-worker training) may fill one key at once
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda fh: np.savez(fh, x=out, err_path=np.array([e.path for e in errors], dtype=str),
                                               err_msg=np.array([e.problem for e in errors], dtype=str)),
                     durable=False)
    return out, errors


def failed_indices(samples: Sequence[Sample], errors: Sequence[ImageError]) -> set[int]:
    bad = {e.path for e in errors}
    return {i for i, s in enumerate(samples) if s.path in bad}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="scan", disable=None if enabled and total >= 50 else True, leave=False)

"""Near-duplicate ("twin") detection between MRI slices: the project's one definition of a twin.

Each image is reduced to a small grayscale thumbnail, centred and scaled to unit norm, so that the dot
product of two rows is their Pearson correlation. Two scans are twins when the thumbnail of one
correlates at r >= TWIN_THRESHOLD with the thumbnail of the other as it is, mirrored left-right, flipped
up-down or turned 180 degrees (TWIN_TRANSFORMS): the benchmark holds all four, and a model trained with
flips has in effect seen each of them. The transforms and the threshold were chosen from measurements of
the benchmark and BRISC (`audits/twins/`). Union-find turns pairs into groups that a split must keep on
one side. Thumbnails and byte digests are cached per file, so a repeated audit costs little.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from xai_bt.data.sample import ImageError, Sample

log = logging.getLogger(__name__)

#: Rows of the left operand per matrix product: bounds memory at BLOCK x n floats.
BLOCK = 2048
_DIGEST_BYTES = 16
_CACHE_VERSION = "2"

#: Pearson r of 32x32 thumbnails from which two scans are twins: the valley between copies (r near 1) and
#: distinct scans in the measured nearest-neighbour distribution (audits/twins/README.md).
TWIN_THRESHOLD = 0.99
#: Transforms of one thumbnail under which it is compared with another; the 90-degree turns, transposes,
#: shifts and zooms measured in audits/twins/ add no twin in the benchmark or BRISC.
TWIN_TRANSFORMS: tuple[str, ...] = ("identity", "mirror_lr", "flip_ud", "rot180")
#: Short words for reports: "as it is", "mirrored", ...
TRANSFORM_WORDS = {"identity": "as it is", "mirror_lr": "mirrored left-right", "flip_ud": "flipped up-down",
                   "rot180": "turned 180 degrees"}
_FLIPS = {"identity": (), "mirror_lr": (2,), "flip_ud": (1,), "rot180": (1, 2)}


def default_cache_dir() -> Path:
    """Where thumbnails are cached: the project's cache folder's `thumbs` (`$XAI_BT_CACHE/thumbs` if that
    variable is set, else `~/.cache/xai_bt/thumbs`)."""
    from xai_bt.data.cache import cache_dir

    return cache_dir("thumbs")


def thumbnail(image: np.ndarray, size: int = 32) -> np.ndarray:
    """One image as a zero-mean, unit-norm float32 vector of size*size (all zeros for a flat image).

    Pillow's antialiased bilinear resize is the reference measure quoted in the data README
    (about 500 / 1,000 benchmark test images with a training twin at r >= 0.99 / 0.95)."""
    img = np.asarray(image, np.float32)
    if img.ndim == 3:
        img = img.mean(axis=2)
    small = np.array(Image.fromarray(img).resize((size, size), Image.BILINEAR), np.float32).ravel()
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    return small / norm if norm > 1e-6 else np.zeros_like(small)


def _cache_file(sample: Sample, size: int, cache_dir: Path | None) -> Path | None:
    """Cache entry for a sample read from a plain file, keyed by absolute path, mtime and size."""
    if cache_dir is None or sample.image is not None:
        return None
    path = os.path.abspath(sample.path)
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = f"{_CACHE_VERSION}|{path}|{st.st_mtime_ns}|{st.st_size}|{size}"
    name = hashlib.sha1(key.encode()).hexdigest()
    return cache_dir / name[:2] / f"{name}.bin"


def _digest(sample: Sample) -> str:
    """Hash of the file's bytes (of the pixel array for in-memory samples): equal means byte-identical."""
    h = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    if sample.image is not None:
        arr = np.ascontiguousarray(sample.image)
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    else:
        with open(sample.path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _read_cache(entry: Path | None, size: int) -> tuple[np.ndarray, str] | None:
    """(thumbnail, digest) stored for a file, or None when absent or damaged."""
    if entry is None:
        return None
    try:
        raw = entry.read_bytes()
    except OSError:
        return None
    if len(raw) != _DIGEST_BYTES + 4 * size * size:
        return None
    return np.frombuffer(raw[_DIGEST_BYTES:], np.float32), raw[:_DIGEST_BYTES].hex()


def _compute(sample: Sample, size: int, entry: Path | None) -> tuple[np.ndarray, str | None, str | None]:
    """(thumbnail, digest, error) read from the image itself and stored in the cache; NaN row on error."""
    from xai_bt.data.datasets import sample_image

    try:
        thumb = thumbnail(sample_image(sample), size)
        digest = _digest(sample)
    except (ImageError, OSError) as exc:
        return np.full(size * size, np.nan, np.float32), None, str(exc)
    if entry is not None:
        _write_atomic(entry, bytes.fromhex(digest) + thumb.tobytes())
    return thumb, digest, None


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a cache entry atomically (xai_bt.io.atomic), so concurrent audits never read half an entry; no
    fsync, since a lost entry is only recomputed. A read-only cache only costs speed."""
    from xai_bt.io.atomic import write_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data, durable=False)
    except OSError as exc:
        log.debug("thumbnail cache not written (%s)", exc)


def fingerprints(samples: Sequence[Sample], size: int = 32, cache_dir: str | Path | None = None,
                 workers: int = 2, cache: bool = True, progress: bool = False
                 ) -> tuple[np.ndarray, list[str | None]]:
    """Thumbnails (n, size*size) and byte digests of `samples`: cached ones are read serially (cheap),
    the others decoded on `workers` threads. Unreadable images give a NaN row and a None digest and
    are logged, not raised."""
    cdir = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) if cache else None
    thumbs = np.full((len(samples), size * size), np.nan, np.float32)
    digests: list[str | None] = [None] * len(samples)
    entries = [_cache_file(s, size, cdir) for s in samples]
    todo = []
    for i, entry in enumerate(entries):
        hit = _read_cache(entry, size)
        if hit is None:
            todo.append(i)
        else:
            thumbs[i], digests[i] = hit
    errors = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(lambda i: _compute(samples[i], size, entries[i]), todo)
        if progress and todo:
            from tqdm import tqdm
            results = tqdm(results, total=len(todo), desc="thumbnails", unit="img", leave=False,
                           disable=None)  # None: a bar on a terminal only, none in logs
        for i, (thumb, digest, error) in zip(todo, results):
            thumbs[i], digests[i] = thumb, digest
            if error:
                errors.append(error)
    if errors:
        log.warning("%d image(s) could not be read, e.g. %s", len(errors), errors[0])
    return thumbs, digests


def thumbnails(samples: Sequence[Sample], size: int = 32, cache_dir: str | Path | None = None,
               workers: int = 2, cache: bool = True, progress: bool = False) -> np.ndarray:
    """Zero-mean unit-norm thumbnails, one row per sample (dot product = Pearson r); NaN row if unreadable."""
    return fingerprints(samples, size, cache_dir, workers, cache, progress)[0]


def _clean(x: np.ndarray) -> np.ndarray:
    """Replace NaN rows (unreadable images) by zeros, which correlate with nothing."""
    x = np.asarray(x, np.float32)
    return np.where(np.isnan(x), np.float32(0), x) if np.isnan(x).any() else x


def describe_twins(threshold: float = TWIN_THRESHOLD, transforms: Sequence[str] = TWIN_TRANSFORMS) -> str:
    """What "twin" means, in words, for reports: "thumbnail Pearson r >= 0.99, compared as it is, ..."."""
    return (f"thumbnail Pearson r >= {threshold:g}, compared "
            + ", ".join(TRANSFORM_WORDS.get(t, t) for t in transforms))


def transform_thumbnails(thumbs: np.ndarray, transform: str) -> np.ndarray:
    """Square thumbnails (n, s*s) mirrored, flipped or turned as named (a key of TRANSFORM_WORDS).

    Each transform is an orthogonal involution, so r(a, T(b)) = r(T(a), b): comparing in one direction
    finds every pair."""
    if transform not in _FLIPS:
        raise ValueError(f"unknown transform {transform!r}; expected one of {', '.join(_FLIPS)}")
    x = np.asarray(thumbs, np.float32)
    if not _FLIPS[transform]:
        return x
    side = int(round(np.sqrt(x.shape[1]))) if x.ndim == 2 else 0
    if side * side != (x.shape[1] if x.ndim == 2 else -1):
        raise ValueError(f"thumbnails of shape {x.shape} are not square images flattened to rows")
    return np.flip(x.reshape(len(x), side, side), _FLIPS[transform]).reshape(x.shape)


def similar_pairs(a: np.ndarray, b: np.ndarray | None = None, threshold: float = TWIN_THRESHOLD,
                  transforms: Sequence[str] = TWIN_TRANSFORMS) -> list[tuple[int, int, float]]:
    """Pairs (i, j, r) with r >= threshold under any of `transforms` (r: the best of them): within `a`
    (i < j) or between rows of `a` and rows of `b`.

    Computed in blocks of BLOCK rows so memory stays at BLOCK x n floats."""
    a = _clean(a)
    within = b is None
    b = a if within else _clean(b)
    found: dict[tuple[int, int], float] = {}
    for name in transforms:
        bt = transform_thumbnails(b, name)
        for start in range(0, len(a), BLOCK):
            stop = min(start + BLOCK, len(a))
            first = start + 1 if within else 0            # only j > i within a set
            sims = a[start:stop] @ bt[first:].T
            ii, jj = np.nonzero(sims >= threshold)
            if within:
                keep = jj + first > ii + start
                ii, jj = ii[keep], jj[keep]
            for i, j, r in zip((ii + start).tolist(), (jj + first).tolist(), sims[ii, jj].tolist()):
                if r > found.get((i, j), -np.inf):
                    found[(i, j)] = r
    return [(i, j, r) for (i, j), r in sorted(found.items())]


def best_matches_by_transform(a: np.ndarray, b: np.ndarray | None = None,
                              transforms: Sequence[str] = TWIN_TRANSFORMS
                              ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each transform, each row's highest r against the transformed rows of `b` (of the other rows
    of `a` if b is None) and its index: what the data audit reports per kind of twin."""
    a_raw = np.asarray(a, np.float32)
    a = _clean(a_raw)
    within = b is None
    b = a if within else _clean(b)
    bad = np.isnan(a_raw).any(axis=1)
    out = {}
    for name in transforms:
        bt = transform_thumbnails(b, name)
        best = np.full(len(a), -np.inf, np.float32)
        idx = np.full(len(a), -1, np.int64)
        if len(b) > int(within):
            for start in range(0, len(a), BLOCK):
                stop = min(start + BLOCK, len(a))
                sims = a[start:stop] @ bt.T
                if within:
                    sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
                idx[start:stop] = sims.argmax(axis=1)
                best[start:stop] = sims[np.arange(stop - start), idx[start:stop]]
        best[bad], idx[bad] = np.nan, -1
        out[name] = (best, idx)
    return out


def best_matches(a: np.ndarray, b: np.ndarray | None = None, transforms: Sequence[str] = TWIN_TRANSFORMS
                 ) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `a`, the highest r under any of `transforms` among rows of `b` (among the other
    rows of `a` if b is None) and its index, so callers can apply any threshold afterwards. Unreadable
    rows give NaN / -1; with nothing to compare against, -inf / -1."""
    per = list(best_matches_by_transform(a, b, transforms).values())
    best, idx = per[0][0].copy(), per[0][1].copy()
    for r, i in per[1:]:
        better = r > best                                   # NaN rows stay NaN
        best[better], idx[better] = r[better], i[better]
    return best, idx


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving and union by size."""

    def __init__(self, n: int):
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, i: int) -> int:
        """Representative of i's set."""
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        """Merge the sets of i and j."""
        ri, rj = self.find(i), self.find(j)
        if ri == rj:
            return
        if self.size[ri] < self.size[rj]:
            ri, rj = rj, ri
        self.parent[rj] = ri
        self.size[ri] += self.size[rj]

    def labels(self) -> np.ndarray:
        """Group id per item, numbered 0.. in order of first appearance."""
        roots = [self.find(i) for i in range(len(self.parent))]
        ids: dict[int, int] = {}
        return np.array([ids.setdefault(r, len(ids)) for r in roots], dtype=np.int64)


def groups_from_pairs(n: int, pairs: Sequence[tuple[int, int, float]] | Sequence[tuple[int, int]],
                      link_by: Sequence[str | None] | None = None) -> np.ndarray:
    """Group id per item: connected components of `pairs`, also uniting items that share a key in `link_by`."""
    uf = UnionFind(n)
    for p in pairs:
        uf.union(int(p[0]), int(p[1]))
    if link_by is not None:
        if len(link_by) != n:
            raise ValueError(f"link_by has {len(link_by)} entries for {n} items")
        first: dict[str, int] = {}
        for i, key in enumerate(link_by):
            if key is not None and key != "":
                uf.union(i, first.setdefault(key, i))
    return uf.labels()


def near_duplicate_groups(thumbs: np.ndarray, threshold: float = TWIN_THRESHOLD,
                          link_by: Sequence[str | None] | None = None) -> np.ndarray:
    """Group id per image: images linked by a chain of twin pairs (or a shared `link_by` key,
    e.g. patient id) share a group, so a split that keeps groups whole cannot leak near-duplicates."""
    return groups_from_pairs(len(thumbs), similar_pairs(thumbs, threshold=threshold), link_by)


def exact_duplicate_groups(digests: Sequence[str | None]) -> list[list[int]]:
    """Index lists of byte-identical items (two or more each); None digests are never grouped."""
    by_digest: dict[str, list[int]] = {}
    for i, d in enumerate(digests):
        if d is not None:
            by_digest.setdefault(d, []).append(i)
    return [ix for ix in by_digest.values() if len(ix) > 1]

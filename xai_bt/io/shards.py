"""A deterministic partition of a sorted file list into N shards, and the per-shard index file names.

Scan i of the sorted list belongs to shard ``i % N + 1``, so N independent processes with K = 1..N cover the
list exactly once whatever machine each runs on; shard K writes `index-K-of-N.csv`, never `index.csv`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["parse_shard", "shard_positions", "index_name", "shard_indexes"]

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'K/N' -> (K, N) with 1 <= K <= N; None for no sharding. Raises ValueError otherwise."""
    if text is None:
        return None
    m = _SHARD.match(text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ValueError(f"--shard must be K/N with 1 <= K <= N (e.g. 2/8), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def shard_positions(n_items: int, shard: tuple[int, int] | None) -> range:
    """Positions of the sorted list that shard (K, N) owns: K-1, K-1+N, ... (all when no shard)."""
    if shard is None:
        return range(n_items)
    k, n = shard
    return range(k - 1, n_items, n)


def index_name(shard: tuple[int, int] | None, base: str = "index.csv") -> str:
    """`index.csv`, or `index-K-of-N.csv` for a shard (each shard writes only its own)."""
    if shard is None:
        return base
    stem, suffix = os.path.splitext(base)
    return f"{stem}-{shard[0]}-of-{shard[1]}{suffix}"


def shard_indexes(out: str | os.PathLike, base: str = "index.csv") -> list[Path]:
    """The per-shard indexes (`index-K-of-N.csv`) in `out`, sorted."""
    stem, suffix = os.path.splitext(base)
    pattern = re.compile(rf"^{re.escape(stem)}-\d+-of-\d+{re.escape(suffix)}$")
    return sorted(p for p in Path(out).glob(f"{stem}-*-of-*{suffix}") if pattern.match(p.name))

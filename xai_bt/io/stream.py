"""Scans streamed through `tf.data`: positions -> decode + prepare in `tf.numpy_function` (parallel, in order,
prefetched, batched). A file that fails yields a flag and a one-line error instead of stopping the stream.
Only the item list is held; images live in a few in-flight batches, so memory stays flat for any archive.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

__all__ = ["Batch", "stream", "one_line"]


@dataclass
class Batch:
    """One batch out of `stream`: positions in the item list, per-item ok flag and error, the arrays."""

    positions: np.ndarray
    ok: np.ndarray
    errors: list[str]
    arrays: tuple[np.ndarray, ...]


def one_line(e: BaseException, limit: int = 200) -> str:
    """What went wrong, in one line: an ImageError's problem without its path, else 'Type: message'."""
    problem = getattr(e, "problem", None)
    if problem:
        text = str(problem)
    else:
        lines = str(e).strip().splitlines()
        text = f"{type(e).__name__}: {lines[0] if lines else ''}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def stream(items: Sequence[Any], load: Callable[[Any], Sequence[np.ndarray]],
           specs: Sequence[tuple[tuple[int, ...], Any]], batch_size: int,
           parallel: int | None = None, prefetch: int = 2) -> Iterator[Batch]:
    """Yield `Batch`es of `load(item)` results, decoded in parallel by `tf.data` and kept in order.

    `specs`: (shape, dtype) of each array `load` returns. An item whose `load` raises comes back with
    ok False, zeros and the error in one line; the pipeline goes on. At most `parallel` items and
    `prefetch` batches are in flight, so memory does not grow with len(items).
    """
    import tensorflow as tf

    shapes = [tuple(s) for s, _ in specs]
    dtypes = [np.dtype(d) for _, d in specs]

    def py_load(i):
        i = int(i)
        try:
            arrays = load(items[i])
            if len(arrays) != len(specs):
                raise ValueError(f"loader returned {len(arrays)} arrays, expected {len(specs)}")
            out = [np.asarray(a, d).reshape(s) for a, (s, d) in zip(arrays, zip(shapes, dtypes))]
            return (np.int64(i), np.bool_(True), np.bytes_(b""), *out)
        except Exception as e:  # any failure belongs to this file only
            zeros = [np.zeros(s, d) for s, d in zip(shapes, dtypes)]
            return (np.int64(i), np.bool_(False), np.bytes_(one_line(e).encode("utf-8", "replace")), *zeros)

    def tf_load(i):
        out = tf.numpy_function(py_load, [i], [tf.int64, tf.bool, tf.string] + [tf.as_dtype(d) for d in dtypes],
                                stateful=False)
        for t, s in zip(out, [(), (), ()] + shapes):
            t.set_shape(s)
        return tuple(out)

    calls = parallel or tf.data.AUTOTUNE
    ds = (tf.data.Dataset.range(len(items))
          .map(tf_load, num_parallel_calls=calls, deterministic=True)
          .batch(batch_size)
          .prefetch(prefetch))
    for pos, ok, err, *arrays in ds.as_numpy_iterator():
        yield Batch(pos, ok, [e.decode("utf-8", "replace") for e in err], tuple(arrays))

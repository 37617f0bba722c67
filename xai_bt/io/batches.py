"""Archive-scale runs: list, shard and stream scans through `tf.data`, write results so a killed run resumes.

The pieces `explain` and `audit` share:

- `list_inputs` / `read_list` / `parse_shard` / `shard_positions`: the sorted file list and its
  deterministic partition (scan i of the sorted list belongs to shard ``i % N + 1``);
- `stream`: a `tf.data` pipeline of positions -> decode + prepare in `tf.numpy_function` (parallel,
  prefetched, batched); a file that fails yields a flag and a one-line error instead of stopping it.
  Only the paths are held; images live in a few in-flight batches, so memory stays flat;
- `write_atomic` (temporary file in the target folder, fsync, `os.replace`) and `sweep_temporaries`;
- `IndexFile`: a CSV appended per batch with flush + fsync, read back tolerating (and repairing) a last
  line cut short by a kill, compacted atomically to one row per scan at the end.
"""
from __future__ import annotations

import csv
import io
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

#: Temporary names end with this, so a sweep after a kill can find them: ``.<target name>.<random>.tmp``.
TMP_SUFFIX = ".tmp"
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


# --------------------------------------------------------------------------------------- file lists
def read_list(path: str | os.PathLike) -> list[str]:
    """Paths from a text file, one per line; blank lines and lines starting with '#' are ignored.
    Relative paths are taken relative to the list file's folder."""
    base = Path(path).parent
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(line if os.path.isabs(line) else os.path.normpath(base / line))
    return out


def list_inputs(inputs: Iterable[str], list_file: str | None = None) -> list[str]:
    """Scan files named or found (recursively) in folders, plus those of `list_file`; sorted, unique.
    Files named in the list are kept even if missing, so they are reported as errors, not dropped."""
    from xai_bt.data.decode import iter_image_files

    files = set(iter_image_files(list(inputs)))
    if list_file:
        files.update(read_list(list_file))
    return sorted(files)


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


# --------------------------------------------------------------------------------------- the pipeline
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


# --------------------------------------------------------------------------------------- atomic writes
def write_atomic(target: str | os.PathLike, data: bytes | Callable[[Any], Any], sync_dir: bool = True) -> Path:
    """Write `data` (bytes, or a function writing to a binary file) to a temporary file beside `target`,
    fsync it, then `os.replace` it into place: readers see the old file or the new one, never half."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            data(fh) if callable(data) else fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(target.parent)
    return target


def move_atomic(source: Path, target: Path) -> Path:
    """fsync a finished file written elsewhere in the same folder, then rename it into place."""
    with open(source, "rb+") as fh:
        os.fsync(fh.fileno())
    os.chmod(source, 0o666 & ~_umask())
    os.replace(source, target)
    return target


def temp_dir(out: Path, name: str) -> Path:
    """A private temporary folder in `out` (same file system, so renames out of it are atomic)."""
    return Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=TMP_SUFFIX, dir=out))


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make renames in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_owner(name: str) -> str | None:
    """The target name a temporary file or folder was made for (`.<name>.<random>.tmp` -> name)."""
    if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
        return None
    parts = name[1:-len(TMP_SUFFIX)].rsplit(".", 1)
    return parts[0] if len(parts) == 2 and parts[0] else None


def sweep_temporaries(folder: str | os.PathLike, owned: Callable[[str], bool] = lambda name: True) -> int:
    """Remove leftovers of killed writers in `folder` whose target name `owned` accepts; returns how many.
    Pass `owned` when other processes (other shards) may be writing into the same folder."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        owner = temp_owner(entry.name)
        if owner is None or not owned(owner):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
        removed += 1
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------------------- the index
class IndexFile:
    """A CSV of result rows keyed by 'path' (or several fields, e.g. ('path', 'method')): appended per
    batch (flush + fsync), read back tolerantly."""

    def __init__(self, path: str | os.PathLike, fields: Sequence[str], key: str | tuple[str, ...] = "path"):
        self.path = Path(path)
        self.fields = tuple(fields)
        self.key = key
        self._fh = None

    def key_of(self, row: dict[str, Any]) -> Any:
        """The row's key: one field's value, or a tuple of values."""
        return row.get(self.key) if isinstance(self.key, str) else tuple(row.get(k) for k in self.key)

    def read(self, repair: bool = False) -> list[dict[str, str]]:
        """All complete rows in file order (none if absent). A last line without its newline (a write cut
        short) is ignored, and with `repair` cut off the file so appends start on a fresh line."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            data = data[:cut]
            if repair:
                with open(self.path, "rb+") as fh:
                    fh.truncate(cut)
                    os.fsync(fh.fileno())
        text = data.decode("utf-8", "replace")
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error:
            return []
        keys = (self.key,) if isinstance(self.key, str) else self.key
        return [r for r in rows if all(r.get(k) for k in keys) and None not in r]

    def latest(self, repair: bool = False) -> dict[Any, dict[str, str]]:
        """key -> its last row (a later row for the same scan replaces an earlier one)."""
        return {self.key_of(r): r for r in self.read(repair)}

    def rewrite(self, rows: Iterable[dict[str, Any]]) -> Path:
        """Replace the file atomically with `rows` (header first)."""
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(self.path, _csv_text(self.fields, rows, header=True).encode())

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append rows (the header first if the file is new or empty), then flush and fsync."""
        if not rows:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "ab")
        header = self._fh.tell() == 0
        self._fh.write(_csv_text(self.fields, rows, header=header).encode())
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def compact(self, extra: Iterable[dict[str, Any]] = ()) -> list[dict[str, str]]:
        """Rewrite with one row per key (the last; `extra` rows, e.g. merged shards, count as earlier),
        sorted by key; returns the rows."""
        rows = {self.key_of(r): r for r in extra}
        rows.update(self.latest())
        ordered = [rows[k] for k in sorted(rows)]
        self.rewrite(ordered)
        return ordered

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "IndexFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _csv_text(fields: Sequence[str], rows: Iterable[dict[str, Any]], header: bool) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows({k: _one_line_value(v) for k, v in r.items()} for r in rows)
    return text.getvalue()


def _one_line_value(v: Any) -> Any:
    """Keep every index row on one line (so a cut-short write can only damage the last line)."""
    return " ".join(v.split()) if isinstance(v, str) and ("\n" in v or "\r" in v) else v


def merge_indexes(out: str | os.PathLike, fields: Sequence[str], base: str = "index.csv") -> Path:
    """Combine `index.csv` and every `index-K-of-N.csv` in `out` into `index.csv` (one row per scan,
    a shard's row winning over an older combined one); the shard files are kept."""
    rows: dict[str, dict[str, str]] = {}
    for path in [Path(out) / base, *shard_indexes(out, base)]:
        rows.update(IndexFile(path, fields).latest())
    target = IndexFile(Path(out) / base, fields)
    target.rewrite(rows[k] for k in sorted(rows))
    return target.path

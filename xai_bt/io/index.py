"""The resumable index of a run: a CSV of result rows, appended per batch (flush + fsync), read back tolerating
(and repairing) a last line cut short by a kill, and compacted atomically to one row per key at the end.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from xai_bt.io.atomic import write_atomic

__all__ = ["IndexFile"]


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
        """Close the append handle (reopened by the next `append`)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "IndexFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _csv_text(fields: Sequence[str], rows: Iterable[dict[str, Any]], header: bool) -> str:
    """Rows as CSV text in `fields` order (other keys ignored), each on one line."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows({k: _one_line_value(v) for k, v in r.items()} for r in rows)
    return text.getvalue()


def _one_line_value(v: Any) -> Any:
    """Keep every index row on one line (so a cut-short write can only damage the last line)."""
    return " ".join(v.split()) if isinstance(v, str) and ("\n" in v or "\r" in v) else v

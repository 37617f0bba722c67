"""Where the focus audit's per-scan rows go: kept in memory (`MemorySink`), or appended per batch to
`scores.csv` / `skipped.csv` (`CsvSink`: flush + fsync, resumable after a kill, one file per shard).

Both take the same rows (one per scan and method, full precision) and give them back for the summary; the
CSV rounds values to 4 decimals (undefined as an empty field), as `scores.csv` does for the memory sink.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

import numpy as np

from xai_bt.audit.measure import FAITHFULNESS_SCORES, MAP_SCORES
from xai_bt.io.atomic import sweep_temporaries, write_atomic
from xai_bt.io.index import IndexFile
from xai_bt.io.shards import index_name, shard_indexes

__all__ = ["BASE_FIELDS", "OUTPUTS", "SCORE_FIELDS", "SKIPPED_FIELDS", "CsvSink", "MemorySink", "Sink", "csv_row"]

#: The files of an audit folder (besides the per-shard CSVs): the rows, the summary and the report.
OUTPUTS = ("scores.csv", "summary.json", "report.html")

BASE_FIELDS = ("path", "label", "plane", "mask_source", "mask_fraction", "max_similarity_train",
               "max_similarity_val", "target", "prediction", "confidence", "correct")
#: The columns of scores.csv, in order.
SCORE_FIELDS = BASE_FIELDS + ("method",) + MAP_SCORES + FAITHFULNESS_SCORES
#: The columns of skipped.csv: the scan, why ("empty mask" or "unreadable") and the error in one line.
SKIPPED_FIELDS = ("path", "reason", "error")
_KEY = ("path", "method")


class Sink(Protocol):
    """What the audit loop writes to and the summary reads from."""

    def start(self, paths: Sequence[str], mine: Iterable[int], methods: Sequence[str]) -> set[str]:
        """Prepare for the scans `paths[j]` (j in `mine`); returns those already done (resumed)."""

    def append(self, rows: Sequence[dict[str, Any]], skipped: Sequence[dict[str, Any]]) -> None:
        """Store one batch's score rows and skipped scans."""

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every score row stored (values as stored: numbers, or the CSV's text)."""

    def skipped(self) -> list[dict[str, Any]]:
        """Every skipped scan: path, reason, error."""

    def fill(self, values: dict[tuple[str, str], dict[str, float]]) -> None:
        """Set more columns (the faithfulness subset's) of the rows keyed (path, method)."""

    def close(self) -> None:
        """Release open files."""


def csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row as scores.csv holds it: floats to 4 decimals, NaN (undefined) as an empty field."""
    return {k: _csv_value(v) for k, v in row.items()}


def _csv_value(v: Any) -> Any:
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, (float, np.floating)):
        return round(float(v), 4) if np.isfinite(v) else ""
    return v


class MemorySink:
    """Rows in memory at full precision (:func:`xai_bt.audit.runner.run_audit`)."""

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._skipped: list[dict[str, Any]] = []

    def start(self, paths: Sequence[str], mine: Iterable[int], methods: Sequence[str]) -> set[str]:
        """Nothing is done yet."""
        self._rows, self._skipped = [], []
        return set()

    def append(self, rows: Sequence[dict[str, Any]], skipped: Sequence[dict[str, Any]]) -> None:
        """Keep the batch's rows."""
        self._rows.extend(rows)
        self._skipped.extend(skipped)

    def rows(self) -> Iterator[dict[str, Any]]:
        """The rows in the order they came."""
        return iter(self._rows)

    def skipped(self) -> list[dict[str, Any]]:
        """The skipped scans in the order they came."""
        return list(self._skipped)

    def fill(self, values: dict[tuple[str, str], dict[str, float]]) -> None:
        """Update the rows keyed (path, method) in place."""
        for row in self._rows:
            row.update(values.get((row["path"], row["method"]), {}))

    def close(self) -> None:
        """Nothing to release."""


class CsvSink:
    """scores.csv and skipped.csv in `out` (or scores-K-of-N.csv / skipped-K-of-N.csv for a shard), appended
    per batch with flush + fsync (:func:`xai_bt.audit.runner.stream_audit`)."""

    def __init__(self, out: str | Path, shard: tuple[int, int] | None = None, resume: bool = False) -> None:
        self.out = Path(out)
        self.shard = shard
        self.resume = resume
        self.scores = IndexFile(self.out / index_name(shard, "scores.csv"), SCORE_FIELDS, _KEY)
        self.skips = IndexFile(self.out / index_name(shard, "skipped.csv"), SKIPPED_FIELDS)

    def start(self, paths: Sequence[str], mine: Iterable[int], methods: Sequence[str]) -> set[str]:
        """Sweep temporaries of killed writers; start both files empty, or (resume) keep the scans that are done
        (every method's row present, or skipped) and, without a shard, merge the shards' files in."""
        names = {self.scores.path.name, self.skips.path.name, *OUTPUTS}
        sweep_temporaries(self.out, names.__contains__)
        if not self.resume:
            self.scores.rewrite([])
            self.skips.rewrite([])
            return set()
        return self._resume({paths[j] for j in mine}, methods)

    def _resume(self, mine: set[str], methods: Sequence[str]) -> set[str]:
        """Scans already done; rewrites both files without rows of unfinished scans."""
        score_rows = self.scores.latest(repair=True)
        skip_rows = self.skips.latest(repair=True)
        if self.shard is None:
            for path in shard_indexes(self.out, "scores.csv"):
                score_rows.update(IndexFile(path, SCORE_FIELDS, _KEY).latest())
            for path in shard_indexes(self.out, "skipped.csv"):
                skip_rows.update(IndexFile(path, SKIPPED_FIELDS).latest())
        have: dict[str, set[str]] = {}
        for path, method in score_rows:
            have.setdefault(path, set()).add(method)
        complete = {p for p, ms in have.items() if set(methods) <= ms}
        done = (complete | set(skip_rows)) & mine
        self.scores.rewrite(r for k, r in sorted(score_rows.items()) if k[0] in complete or k[0] not in mine)
        self.skips.rewrite(r for k, r in sorted(skip_rows.items()))
        return done

    def append(self, rows: Sequence[dict[str, Any]], skipped: Sequence[dict[str, Any]]) -> None:
        """Append the batch's rows (rounded) and skipped scans; each file is flushed and fsynced."""
        self.scores.append([csv_row(r) for r in rows])
        self.skips.append(list(skipped))

    def rows(self) -> Iterator[dict[str, Any]]:
        """The rows of scores.csv, read one by one (flat memory)."""
        if not self.scores.path.is_file():
            return
        with open(self.scores.path, newline="", encoding="utf-8") as fh:
            yield from csv.DictReader(fh)

    def skipped(self) -> list[dict[str, Any]]:
        """The rows of skipped.csv."""
        return self.skips.read()

    def fill(self, values: dict[tuple[str, str], dict[str, float]]) -> None:
        """Rewrite scores.csv line by line (flat memory, atomically) with the given columns filled."""
        if not values:
            return
        self.close()
        path = self.scores.path

        def write(fh) -> None:
            text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            writer = csv.DictWriter(text, fieldnames=SCORE_FIELDS, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            with open(path, newline="", encoding="utf-8") as src:
                for r in csv.DictReader(src):
                    r.update(csv_row(values.get((r["path"], r["method"]), {})))
                    writer.writerow(r)
            text.flush()
            text.detach()

        write_atomic(path, write)

    def close(self) -> None:
        """Close both files."""
        self.scores.close()
        self.skips.close()

"""Result tables: rows of numbers written as CSV (full precision), Markdown and LaTeX.

The numbers come from :mod:`xai_bt.evaluation.metrics` and :mod:`xai_bt.evaluation.calibration`; this
module only lays them out, so a table and a figure made from the same dict always agree. The CSV keeps
code names (``no_tumor``) for programs; Markdown and LaTeX show class names as people read them
(:func:`xai_bt.names.display_name`: "no tumor").
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xai_bt.evaluation.metrics import PER_CLASS_KEYS
from xai_bt.names import display_name

#: Columns whose values are class names, shown through display_name in Markdown and LaTeX.
CLASS_COLUMNS = ("class",)


def to_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten a :func:`xai_bt.evaluation.metrics.classification_report_dict` into table rows: one per
    class, then the averages."""
    rows = [{"class": name, **{key: vals[key] for key in PER_CLASS_KEYS}}
            for name, vals in report["per_class"].items()]
    rows += [{"class": f"{avg} avg", **{key: vals[key] for key in PER_CLASS_KEYS}}
             for avg, vals in report["averages"].items()]
    return rows


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Union of the rows' keys, in order of first appearance."""
    return list(dict.fromkeys(key for row in rows for key in row))


def _cell(value: Any, digits: int, missing: str, column: str = "") -> str:
    """A value formatted for a human-readable table (a class name as people read it)."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return missing
    if column in CLASS_COLUMNS and isinstance(value, str):
        return display_name(value)
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def _is_numeric(rows: Sequence[dict[str, Any]], col: str) -> bool:
    return all(isinstance(r.get(col), (int, float, np.number)) or r.get(col) is None for r in rows)


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def markdown_table(rows: Sequence[dict[str, Any]], digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned, undefined values as an en dash)."""
    cols = _columns(rows)
    align = ["---:" if _is_numeric(rows, c) else ":---" for c in cols]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(r.get(c), digits, "–", c) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def latex_table(rows: Sequence[dict[str, Any]], digits: int = 3) -> str:
    """A booktabs ``tabular`` (no float environment, so it can be ``\\input`` into any table)."""
    cols = _columns(rows)
    spec = "".join("r" if _is_numeric(rows, c) else "l" for c in cols)
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(_tex(c) for c in cols) + r" \\",
             r"\midrule"]
    lines += [" & ".join(_tex(_cell(r.get(c), digits, "--", c)) for c in cols) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(
    rows: Sequence[dict[str, Any]], out_stem: str | Path, digits: int = 3, overwrite: bool = False
) -> list[Path]:
    """Write rows as ``<out_stem>.csv`` (full precision), ``.md`` and ``.tex`` (rounded to ``digits``).

    Like :func:`xai_bt.plots.style.save_figure`, refuses to replace existing results unless ``overwrite``;
    nothing is written if any target exists.
    """
    if not rows:
        raise ValueError("no rows to write")
    paths = [Path(f"{out_stem}.{ext}") for ext in ("csv", "md", "tex")]
    if not overwrite:
        for path in paths:
            if path.exists():
                raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    with paths[0].open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=_columns(rows))
        writer.writeheader()
        writer.writerows(rows)
    paths[1].write_text(markdown_table(rows, digits), encoding="utf-8")
    paths[2].write_text(latex_table(rows, digits), encoding="utf-8")
    return paths

"""Which scan files a run covers: files and folders named, plus a list file; sorted and unique."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

__all__ = ["read_list", "list_inputs"]


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


def list_inputs(inputs: Iterable[str | os.PathLike], list_file: str | os.PathLike | None = None) -> list[str]:
    """Scan files named or found (recursively) in folders, plus those of `list_file`; sorted, unique.
    Files named in the list are kept even if missing, so they are reported as errors, not dropped."""
    from xai_bt.data.decode import iter_image_files

    files = set(iter_image_files(list(inputs)))
    if list_file:
        files.update(read_list(list_file))
    return sorted(files)

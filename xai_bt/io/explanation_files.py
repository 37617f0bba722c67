"""An explanation on disk: `<stem>.<fmt>` figures, the `<stem>.json` sidecar with the numbers a reader needs
to check the picture (peak, top-k area and range of every map, in input pixels and in fractions of the
original image, and the competence warnings: how the scan is unlike the training scans, `[]` when it is
not) and, if asked, the raw maps. Nothing is replaced unless told to, every target is checked
before any is written, and each file is written atomically (temporary file, then rename), so an
interrupted run leaves no half-written file behind."""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xai_bt.attribution.result import Explanation
from xai_bt.attribution.summary import explanation_summary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["output_paths", "default_stem", "save_explanation", "sidecar"]


def output_paths(stem: str, out_dir: str | os.PathLike, formats: Sequence[str] = ("png", "pdf"),
                 methods: Sequence[str] = (), save_maps: bool = False) -> list[Path]:
    """Every file `save_explanation` writes for a scan: figures, the JSON sidecar, maps if asked."""
    out = Path(out_dir)
    paths = [out / f"{stem}.{fmt.lstrip('.')}" for fmt in formats] + [out / f"{stem}.json"]
    if save_maps:
        paths += [out / f"{stem}_{method}.npy" for method in methods]
    return paths


def default_stem(expl: Explanation) -> str:
    """Output file stem: the scan's file name without suffix, or "explanation" for array input."""
    return Path(expl.path).stem if expl.path else "explanation"


def save_explanation(expl: Explanation, out_dir: str | os.PathLike, formats: Sequence[str] = ("png", "pdf"),
                     overwrite: bool = False, save_maps: bool = False, top_k: float = 0.1,
                     mask: np.ndarray | None = None, stem: str | None = None, sync_dir: bool = True) -> list[Path]:
    """Write `<stem>.<fmt>` figures, the `<stem>.json` sidecar and, with `save_maps`, `<stem>_<method>.npy`,
    each atomically and fsynced (no formats: the sidecar only). `sync_dir=False` leaves the folder's fsync
    to a caller writing many scans.

    Raises FileExistsError naming the first existing target unless `overwrite`; nothing is written then.
    Returns the paths written, figures first.
    """
    from xai_bt.io.atomic import fsync_dir, write_atomic

    stem = stem or default_stem(expl)
    targets = output_paths(stem, out_dir, formats, list(expl.maps), save_maps)
    if not overwrite:
        for path in targets:
            if path.exists():
                raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if formats:
        from xai_bt.plots.explanation import plot_explanation

        _save_figures_atomically(plot_explanation(expl, top_k, mask), out, stem, formats)
    summary = json.dumps(sidecar(expl, top_k), indent=2, default=_json_value) + "\n"
    write_atomic(out / f"{stem}.json", summary.encode(), sync_dir=False)
    if save_maps:
        for method, heatmap in expl.maps.items():
            arr = np.asarray(heatmap, dtype=np.float32)
            write_atomic(out / f"{stem}_{method}.npy", lambda fh, a=arr: np.save(fh, a), sync_dir=False)
    if sync_dir:
        fsync_dir(out)
    return targets


def sidecar(expl: Explanation, top_k: float = 0.1) -> dict[str, Any]:
    """What `<stem>.json` holds: `attribution.summary.explanation_summary`, the scan's competence warnings and
    each method's focus-audit score when the bundle's audit measured it."""
    out = explanation_summary(expl, top_k)
    out["warnings"] = list(expl.warnings)
    out["audit"] = dict(expl.audit)
    return out


def _json_value(value: Any) -> Any:
    """numpy scalars and arrays as JSON numbers and lists; anything else by its text."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return str(value)


def _save_figures_atomically(fig: Figure, out: Path, stem: str, formats: Sequence[str]) -> None:
    """Render with the project's `save_figure` into a temporary folder beside the targets, then move each
    file into place (fsynced, renamed)."""
    from xai_bt.io.atomic import move_atomic, temp_dir
    from xai_bt.plots.style import save_figure

    tmp = temp_dir(out, stem)
    try:
        for path in save_figure(fig, tmp / stem, formats, overwrite=True):
            move_atomic(path, out / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        fig.clear()

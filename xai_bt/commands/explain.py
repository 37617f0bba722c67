"""`python -m xai_bt explain scan.jpg [more files | folders] [--methods gradcam,layercam|all] [--out DIR]`.

Writes, per scan, an annotated figure (`<stem>.png/.pdf`), a JSON sidecar and optionally the raw maps,
plus `index.csv` in the output folder (one row per scan: ok / error / skipped). Bad files are reported
and the run goes on; existing outputs are kept unless --overwrite. Exit 0 when every scan was explained
or skipped, 1 when any failed, 2 for usage errors.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import fail

FORMATS = ("png", "pdf", "svg")
INDEX = "index.csv"
INDEX_FIELDS = ("path", "status", "prediction", "confidence", "figure", "error", "note")


class UsageError(ValueError):
    """A command-line value that cannot work; the message is shown as one line, exit code 2."""


@dataclass
class Job:
    """One scan to explain: its file, the output stem, and what became of it (an index row)."""

    path: str
    stem: str
    row: dict[str, Any] = field(default_factory=dict)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="scan files (JPEG, PNG, TIFF, DICOM) or folders")
    p.add_argument("--model", help="model bundle (default: the shipped default model)")
    p.add_argument("--methods", default="gradcam",
                   help="comma-separated methods, or 'all' (default: gradcam)")
    p.add_argument("--target", help="class to explain (default: each scan's predicted class)")
    p.add_argument("--layer", help="conv layer for the CAM methods (default: the bundle's last conv layer)")
    p.add_argument("--out", default="explanations", help="output folder (default: explanations/)")
    p.add_argument("--format", default="png,pdf", help="figure formats, comma-separated (default: png,pdf)")
    p.add_argument("--top-k", type=float, default=0.1,
                   help="fraction of pixels outlined as the map's top region (default: 0.1)")
    p.add_argument("--mask", help="tumor mask of the (single) scan, outlined on every panel")
    p.add_argument("--save-maps", action="store_true", help="also save each map as <stem>_<method>.npy")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs instead of skipping")
    p.add_argument("--batch-size", type=int, default=16)


def main(args: argparse.Namespace) -> int:
    from ..bundle import BundleError, default_model_path, load_model
    from ..imageio import iter_image_files

    try:
        methods, formats = parse_methods(args.methods), parse_formats(args.format)
        check_numbers(args.top_k, args.batch_size)
        files = _input_files(args.inputs, iter_image_files)
        if args.mask and len(files) != 1:
            raise UsageError(f"--mask describes one scan, but {len(files)} scans were given")
        if args.mask and not Path(args.mask).is_file():
            raise UsageError(f"{args.mask}: no such mask file")
        bundle = load_model(args.model or default_model_path())
        target = resolve_target(args.target, bundle.class_names)
        check_layer(args.layer, bundle)
    except (UsageError, BundleError) as e:
        return fail(str(e))
    jobs = [Job(f, s) for f, s in zip(files, unique_stems(files))]
    out = Path(args.out)
    todo = [j for j in jobs if not _skip_existing(j, out, formats, methods, args)]
    try:
        _run(todo, bundle, methods, formats, target, args)
    finally:                      # also after Ctrl-C: the index lists what was done so far
        write_index(out, [j.row for j in jobs if j.row.get("status")])
    return _report(jobs, out)


# --- checking what the user asked for -----------------------------------------------------------

def parse_methods(text: str) -> list[str]:
    """'gradcam,layercam' or 'all' -> method names, in the order given, known to `xai_bt.explain`."""
    from ..explain import METHODS

    if text.strip().lower() == "all":
        return list(METHODS)
    names = list(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise UsageError(f"unknown method {unknown[0] if unknown else text!r}; choose from {', '.join(METHODS)} or all")
    return names


def parse_formats(text: str) -> list[str]:
    """'png,pdf' -> ['png', 'pdf']; only formats matplotlib writes losslessly for papers."""
    names = list(dict.fromkeys(f.strip().lower().lstrip(".") for f in text.split(",") if f.strip()))
    bad = [f for f in names if f not in FORMATS]
    if bad or not names:
        raise UsageError(f"unknown figure format {bad[0] if bad else text!r}; choose from {', '.join(FORMATS)}")
    return names


def check_numbers(top_k: float, batch_size: int) -> None:
    """--top-k must be a fraction in (0, 1] and --batch-size positive."""
    if not 0 < top_k <= 1:
        raise UsageError(f"--top-k is a fraction of pixels in (0, 1], got {top_k}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")


def resolve_target(name: str | None, class_names: tuple[str, ...]) -> str | None:
    """--target as one of the model's class names (dataset spellings such as 'notumor' accepted)."""
    from ..sample import normalise_label

    if name is None:
        return None
    if name in class_names:
        return name
    try:
        canonical = normalise_label(name)
    except ValueError:
        canonical = None
    if canonical not in class_names:
        raise UsageError(f"unknown target class {name!r}; this model knows {', '.join(class_names)}")
    return canonical


def check_layer(layer: str | None, bundle) -> None:
    """--layer must name a layer of the tumor network."""
    if layer is None:
        return
    names = [l.name for l in bundle.model.layers]
    if layer not in names:
        raise UsageError(f"unknown layer {layer!r}; the model's last conv layer is {bundle.last_conv_layer!r}")


def _input_files(inputs: list[str], iter_image_files) -> list[str]:
    """Scan files named or found in folders; missing paths and empty selections are usage errors."""
    missing = [p for p in inputs if not Path(p).exists()]
    if missing:
        raise UsageError(f"{missing[0]}: no such file or folder")
    files = iter_image_files(inputs)
    if not files:
        raise UsageError(f"no scan files found in {' '.join(inputs)}")
    return files


def unique_stems(files: list[str]) -> list[str]:
    """Output stems: the file name without suffix, prefixed by parent folders where names repeat."""
    paths = [Path(f) for f in files]
    stems = [p.stem for p in paths]
    counts = Counter(stems)
    stems = [f"{p.parent.name}_{s}" if counts[s] > 1 and p.parent.name else s for p, s in zip(paths, stems)]
    seen: Counter = Counter()
    out = []
    for s in stems:
        seen[s] += 1
        out.append(s if seen[s] == 1 else f"{s}_{seen[s]}")
    return out


# --- doing it -----------------------------------------------------------------------------------

def _skip_existing(job: Job, out: Path, formats: list[str], methods: list[str], args) -> bool:
    """Mark a scan whose outputs exist as skipped (unless --overwrite); True when skipped."""
    from ..heatmap_figure import output_paths

    existing = [p for p in output_paths(job.stem, out, formats, methods, args.save_maps) if p.exists()]
    if not existing:
        return False
    if args.overwrite:
        job.row["note"] = "replaced earlier outputs"
        return False
    print(f"skip: {job.path}: {existing[0]} exists (pass --overwrite to replace)", file=sys.stderr)
    job.row.update(path=job.path, status="skipped", figure=str(out / f"{job.stem}.{formats[0]}"),
                   note="outputs exist; pass --overwrite to replace")
    job.row.update(_previous_result(out / f"{job.stem}.json", job.path))
    return True


def _previous_result(sidecar: Path, path: str) -> dict[str, Any]:
    """Prediction and confidence recorded by an earlier run, so a skipped scan's index row stays useful;
    a note instead when the existing outputs were made for another scan of the same name."""
    try:
        data = json.loads(sidecar.read_text())
        if data.get("path") not in (None, path):
            return {"note": f"outputs of this name exist for {data['path']}; pass --overwrite to replace"}
        return {"prediction": data["prediction"], "confidence": f"{data['confidence']:.4f}"}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _run(jobs: list[Job], bundle, methods: list[str], formats: list[str], target: str | None, args) -> None:
    """Explain the jobs batch by batch under a progress bar; every job ends with an index row."""
    from tqdm import tqdm

    from ..bundle import iter_batches

    if not jobs:
        return
    with tqdm(total=len(jobs), unit="scan", file=sys.stderr, desc="explaining") as bar:
        for batch in iter_batches(jobs, args.batch_size):
            _explain_batch(batch, bundle, methods, formats, target, args, bar.write)
            bar.update(len(batch))


def _explain_batch(batch: list[Job], bundle, methods: list[str], formats: list[str], target: str | None,
                   args, say) -> None:
    """Read, explain and save one batch; a bad file or a failed save only fails its own scan."""
    import numpy as np

    from ..explain import explain
    from ..heatmap_figure import GEOMETRY_KEY, save_explanation

    ready, inputs, extras = [], [], []
    for job in batch:
        try:
            x, extra = _prepare(job.path, bundle, args.mask)
        except (ValueError, OSError) as e:  # ImageError (a ValueError) for bad scans and masks
            _failed(job, _reason(e, job.path), say)
            continue
        ready.append(job)
        inputs.append(x)
        extras.append(extra)
    if not ready:
        return
    try:
        explanations = explain(bundle, np.concatenate(inputs), methods=tuple(methods), target=target,
                               layer=args.layer, batch_size=args.batch_size)
    except Exception as e:  # a method failing on this batch: report its scans, keep going
        for job in ready:
            _failed(job, f"explanation failed ({_reason(e, job.path)})", say)
        return
    for job, expl, extra in zip(ready, explanations, extras):
        expl.path = job.path
        expl.extra[GEOMETRY_KEY] = extra["geometry"]
        if extra["mask"] is not None:
            expl.mask = extra["mask"]
        try:
            written = save_explanation(expl, args.out, formats, overwrite=args.overwrite,
                                       save_maps=args.save_maps, top_k=args.top_k, stem=job.stem)
        except (OSError, ValueError) as e:
            _failed(job, f"cannot save ({_reason(e, job.path)})", say)
            continue
        job.row.update(path=job.path, status="ok", prediction=expl.predicted,
                       confidence=f"{expl.confidence:.4f}", figure=str(written[0]))
        say(f"{job.path}: {expl.predicted} ({expl.confidence:.3f}) -> {written[0]}", file=sys.stdout)


def _prepare(path: str, bundle, mask_path: str | None):
    """Decode once: the model input (1, S, S, 1), the geometry back to the scan, the prepared mask."""
    from ..heatmap_figure import scan_geometry
    from ..imageio import read_image, read_mask

    gray = read_image(path)
    pre = bundle.preprocessing
    extra = {"geometry": scan_geometry(gray.shape, pre.head_box(gray)), "mask": None}
    if mask_path:
        extra["mask"] = pre.prepare_mask(read_mask(mask_path, gray.shape), gray)
    return bundle.prepare(gray), extra


def _failed(job: Job, reason: str, say) -> None:
    """Record a scan that could not be explained and tell the user in one line."""
    job.row.update(path=job.path, status="error", error=reason)
    say(f"error: {job.path}: {reason}", file=sys.stderr)


def _reason(e: Exception, path: str) -> str:
    """One line saying what went wrong; an ImageError about the scan itself without repeating its path."""
    if getattr(e, "path", None) == path and getattr(e, "problem", None):
        return e.problem
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 200 else text[:197] + "..."


# --- the index and the summary ------------------------------------------------------------------

def write_index(out: Path, rows: list[dict[str, Any]]) -> Path:
    """Write `index.csv` atomically: this run's rows, plus earlier rows of scans not in this run."""
    from ..heatmap_figure import write_atomically

    out.mkdir(parents=True, exist_ok=True)
    path = out / INDEX
    this_run = {r["path"] for r in rows}
    earlier = [r for r in _read_index(path) if r.get("path") not in this_run]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=INDEX_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(earlier + rows, key=lambda r: r["path"]))
    write_atomically(path, lambda fh: fh.write(text.getvalue().encode()))
    return path


def _read_index(path: Path) -> list[dict[str, str]]:
    """Rows of an existing index (none if absent or unreadable)."""
    try:
        with path.open(newline="") as fh:
            return [r for r in csv.DictReader(fh) if r.get("path")]
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def _report(jobs: list[Job], out: Path) -> int:
    """One summary line, the failures listed again; exit 1 if any scan failed."""
    counts = Counter(j.row.get("status") for j in jobs)
    print(f"{counts['ok']} explained, {counts['skipped']} skipped, {counts['error']} failed; "
          f"figures and {INDEX} in {out}/", file=sys.stderr)
    failed = [j for j in jobs if j.row.get("status") == "error"]
    for job in failed:
        print(f"  failed: {job.path}: {job.row['error']}", file=sys.stderr)
    return 1 if failed else 0

"""`python -m xai_bt explain scan.jpg [more files | folders] [--list files.txt] [--methods gradcam,layercam|all] [--out DIR]`.

Writes, per scan, an annotated figure (`<stem>.png/.pdf`, or none with `--format none`), a JSON sidecar and
optionally the raw maps, plus `index.csv` in the output folder (one row per scan: ok / error / skipped).
Scans stream through `tf.data` in batches (:mod:`xai_bt.io.batches`), so memory stays flat for any archive;
each batch's files are written atomically and its index rows appended (fsync) as it finishes. `--resume`
finishes a killed run without redoing finished scans; `--shard K/N` explains every N-th scan of the
sorted list into `index-K-of-N.csv`, and a final `--resume` run without `--shard` merges the shards'
indexes into `index.csv`. Bad files are reported and the run goes on; existing outputs are kept unless
--overwrite. Exit 0 when every scan was explained or skipped, 1 when any failed, 2 for usage errors.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xai_bt.cli._common import UsageError, check_numbers, fail, parse_formats, parse_methods, resolve_target

INDEX = "index.csv"
INDEX_FIELDS = ("path", "status", "prediction", "confidence", "figure", "error", "note")
GEOMETRY_FIELDS = 6   # original height, width, head box y0, y1, x0, x1


@dataclass
class Job:
    """One scan to explain: its file, the output stem, and what became of it (an index row)."""

    path: str
    stem: str
    row: dict[str, Any] = field(default_factory=dict)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", help="scan files (JPEG, PNG, TIFF, DICOM) or folders (searched recursively)")
    p.add_argument("--list", dest="list_file", metavar="FILE",
                   help="text file of scan paths, one per line (relative to the file's folder)")
    p.add_argument("--model", help="model bundle (default: the shipped default model)")
    p.add_argument("--methods", default="gradcam",
                   help="comma-separated methods, or 'all' (default: gradcam)")
    p.add_argument("--target", help="class to explain (default: each scan's predicted class)")
    p.add_argument("--layer", help="conv layer for the CAM methods (default: the bundle's last conv layer)")
    p.add_argument("--out", default="explanations", help="output folder (default: explanations/)")
    p.add_argument("--format", default="png,pdf",
                   help="figure formats, comma-separated, or 'none' for JSON sidecars only (default: png,pdf)")
    p.add_argument("--top-k", type=float, default=0.1,
                   help="fraction of pixels outlined as the map's top region (default: 0.1)")
    p.add_argument("--mask", help="tumor mask of the (single) scan, outlined on every panel")
    p.add_argument("--save-maps", action="store_true", help="also save each map as <stem>_<method>.npy")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs instead of skipping")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted run: scans with an index row and their files are not redone")
    p.add_argument("--shard", metavar="K/N",
                   help="explain only shard K of N of the sorted file list (index: index-K-of-N.csv)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, help="scans decoded in parallel (default: tf.data AUTOTUNE)")


def main(args: argparse.Namespace) -> int:
    from xai_bt.io import batches as archive
    from xai_bt.model.bundle import BundleError, default_model_path, load_model

    try:
        methods, formats = parse_methods(args.methods), parse_formats(args.format)
        check_numbers(args.top_k, args.batch_size)
        shard = archive.parse_shard(args.shard)
        if args.workers is not None and args.workers < 1:
            raise UsageError(f"--workers must be at least 1, got {args.workers}")
        if args.resume and args.overwrite:
            raise UsageError("--resume keeps finished scans and --overwrite redoes them: choose one")
        files = input_files(args.inputs, args.list_file)
        if args.mask and len(files) != 1:
            raise UsageError(f"--mask describes one scan, but {len(files)} scans were given")
        if args.mask and not Path(args.mask).is_file():
            raise UsageError(f"{args.mask}: no such mask file")
        bundle = load_model(args.model or default_model_path())
        target = resolve_target(args.target, bundle.class_names)
        check_layer(args.layer, bundle)
    except (UsageError, BundleError, ValueError) as e:
        return fail(str(e))
    stems = unique_stems(files)                 # over the whole list, so shards never share a name
    jobs = [Job(files[i], stems[i]) for i in archive.shard_positions(len(files), shard)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index = archive.IndexFile(out / archive.index_name(shard, INDEX), INDEX_FIELDS)
    names = {n for j in jobs for n in _output_names(j.stem, formats, methods, args.save_maps)} | {index.path.name}
    archive.sweep_temporaries(out, names.__contains__)      # leftovers of a killed run
    if args.resume:
        todo, earlier = _resume(jobs, index, out, formats, methods, args, merge=shard is None)
    else:
        index.read(repair=True)               # a row cut short by a kill must not swallow the next one
        todo = [j for j in jobs if not _skip_existing(j, out, formats, methods, args)]
        index.append([j.row for j in jobs if j.row.get("status") == "skipped"])
        earlier = []
    start = time.perf_counter()
    try:
        _run(todo, bundle, methods, formats, target, args, index)
    finally:                      # also after Ctrl-C: one row per scan, sorted
        index.close()
        index.compact()
    return _report(jobs, earlier, index.path, time.perf_counter() - start)


# --- checking what the user asked for -----------------------------------------------------------

def check_layer(layer: str | None, bundle) -> None:
    """--layer must name a layer of the tumor network."""
    if layer is None:
        return
    names = [layer.name for layer in bundle.model.layers]
    if layer not in names:
        raise UsageError(f"unknown layer {layer!r}; the model's last conv layer is {bundle.last_conv_layer!r}")


def input_files(inputs: list[str], list_file: str | None = None) -> list[str]:
    """Scan files named, found in folders (recursively) or listed in `list_file`, sorted; missing inputs
    and empty selections are usage errors (a missing file named inside the list fails only its scan)."""
    from xai_bt.io.batches import list_inputs

    missing = [p for p in inputs + ([list_file] if list_file else []) if not Path(p).exists()]
    if missing:
        raise UsageError(f"{missing[0]}: no such file or folder")
    if not inputs and not list_file:
        raise UsageError("give scan files or folders, or --list FILE")
    try:
        files = list_inputs(inputs, list_file)
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{list_file}: cannot read the list ({e})") from e
    if not files:
        raise UsageError(f"no scan files found in {' '.join(inputs + ([list_file] if list_file else []))}")
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


def _output_names(stem: str, formats: list[str], methods: list[str], save_maps: bool) -> list[str]:
    """File names a scan's outputs have (and its temporary folder's name, the stem)."""
    from xai_bt.io.explanation_files import output_paths

    return [stem] + [p.name for p in output_paths(stem, ".", formats, methods, save_maps)]


# --- which scans to do --------------------------------------------------------------------------

def _outputs_exist(stem: str, out: Path, formats: list[str], methods: list[str], save_maps: bool) -> bool:
    from xai_bt.io.explanation_files import output_paths

    return all(p.exists() for p in output_paths(stem, out, formats, methods, save_maps))


def _resume(jobs: list[Job], index, out: Path, formats: list[str], methods: list[str], args,
            merge: bool) -> tuple[list[Job], list[dict[str, str]]]:
    """Split jobs into finished (an index row, and for ok/skipped rows all their files) and to do; rewrite
    the index without rows of unfinished scans so each scan ends with exactly one row. `merge`: also take
    rows from the shard indexes (`index-K-of-N.csv`) in `out`. Returns (to do, earlier rows of these jobs)."""
    from xai_bt.io import batches as archive

    rows = index.latest(repair=True)
    if merge:
        for path in archive.shard_indexes(out, INDEX):
            rows.update(archive.IndexFile(path, INDEX_FIELDS).latest())
    this_run = {j.path for j in jobs}
    keep = {p: r for p, r in rows.items() if p not in this_run}
    todo, earlier = [], []
    for job in jobs:
        row = rows.get(job.path)
        finished = row is not None and (row.get("status") == "error" or (
            row.get("status") in ("ok", "skipped")
            and _outputs_exist(job.stem, out, formats, methods, args.save_maps)))
        if finished:
            keep[job.path] = row
            earlier.append(row)
            continue
        sidecar = _previous_result(out / f"{job.stem}.json", job.path)
        if "note" in sidecar:              # outputs of this name belong to another scan: leave them
            job.row.update(path=job.path, status="skipped", figure=str(out / f"{job.stem}.json"), **sidecar)
            keep[job.path] = job.row
            earlier.append(job.row)
            continue
        todo.append(job)                   # files without a row are from a killed batch: redo them
    index.rewrite(keep[p] for p in sorted(keep))
    if earlier:
        print(f"resume: {len(earlier)} of {len(jobs)} scans already done, {len(todo)} to go", file=sys.stderr)
    return todo, earlier


def _skip_existing(job: Job, out: Path, formats: list[str], methods: list[str], args) -> bool:
    """Mark a scan whose outputs exist as skipped (unless --overwrite); True when skipped."""
    from xai_bt.io.explanation_files import output_paths

    existing = [p for p in output_paths(job.stem, out, formats, methods, args.save_maps) if p.exists()]
    if not existing:
        return False
    if args.overwrite:
        job.row["note"] = "replaced earlier outputs"
        return False
    print(f"skip: {job.path}: {existing[0]} exists (pass --overwrite to replace)", file=sys.stderr)
    job.row.update(path=job.path, status="skipped", figure=str(out / f"{job.stem}.{(formats or ['json'])[0]}"),
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


# --- doing it -----------------------------------------------------------------------------------

def _run(jobs: list[Job], bundle, methods: list[str], formats: list[str], target: str | None, args,
         index) -> None:
    """Stream the jobs through tf.data under a progress bar; each batch's rows are appended when it is saved."""
    from tqdm import tqdm

    from xai_bt.io import batches as archive

    if not jobs:
        return
    load, specs = _loader(bundle, args.mask)
    batches = archive.stream([j.path for j in jobs], load, specs, args.batch_size, parallel=args.workers)
    with tqdm(total=len(jobs), unit="scan", file=sys.stderr, desc="explaining", smoothing=0.1) as bar:
        for batch in batches:
            rows = _explain_batch([jobs[i] for i in batch.positions], batch, bundle, methods, formats,
                                  target, args, bar.write)
            archive.fsync_dir(args.out)      # the renames first, then the rows that say they happened
            index.append(rows)
            bar.update(len(rows))


def _loader(bundle, mask_path: str | None):
    """The per-scan decode for tf.data: path -> (model input (S, S, 1), geometry[6], [prepared mask])."""
    import numpy as np

    from xai_bt.data.decode import read_image, read_mask

    pre = bundle.preprocessing
    size = pre.image_size

    def load(path: str):
        gray = read_image(path)
        out = [bundle.prepare(gray)[0], np.array([*gray.shape, *pre.head_box(gray)], np.int32)]
        if mask_path:
            out.append(pre.prepare_mask(read_mask(mask_path, gray.shape), gray))
        return out

    specs = [((size, size, 1), np.float32), ((GEOMETRY_FIELDS,), np.int32)]
    return load, specs + ([((size, size), bool)] if mask_path else [])


def _explain_batch(batch: list[Job], data, bundle, methods: list[str], formats: list[str],
                   target: str | None, args, say) -> list[dict[str, Any]]:
    """Explain and save one streamed batch; a bad file or a failed save only fails its own scan.
    Returns the batch's index rows, in order."""
    import numpy as np

    from xai_bt.attribution.explain import explain
    from xai_bt.attribution.summary import GEOMETRY_KEY, scan_geometry
    from xai_bt.io.explanation_files import save_explanation

    for job, ok, error in zip(batch, data.ok, data.errors):
        if not ok:
            _failed(job, error, say)
    good = np.flatnonzero(data.ok)
    explanations = []
    if good.size:
        try:
            explanations = explain(bundle, data.arrays[0][good], methods=tuple(methods), target=target,
                                   layer=args.layer, batch_size=args.batch_size)
        except Exception as e:  # a method failing on this batch: report its scans, keep going
            for i in good:
                _failed(batch[i], f"explanation failed ({_reason(e, batch[i].path)})", say)
            explanations = []
    for i, expl in zip(good, explanations):
        job = batch[i]
        geo = data.arrays[1][i]
        expl.path = job.path
        expl.extra[GEOMETRY_KEY] = scan_geometry(tuple(geo[:2]), tuple(geo[2:]))
        if args.mask:
            expl.mask = data.arrays[2][i]
        try:
            written = save_explanation(expl, args.out, formats, overwrite=True, save_maps=args.save_maps,
                                       top_k=args.top_k, stem=job.stem, sync_dir=False)
        except (OSError, ValueError) as e:
            _failed(job, f"cannot save ({_reason(e, job.path)})", say)
            continue
        job.row.update(path=job.path, status="ok", prediction=expl.predicted,
                       confidence=f"{expl.confidence:.4f}", figure=str(written[0]), error="")
        say(f"{job.path}: {expl.predicted} ({expl.confidence:.3f}) -> {written[0]}", file=sys.stdout)
    return [j.row for j in batch]


def _failed(job: Job, reason: str, say) -> None:
    """Record a scan that could not be explained and tell the user in one line."""
    job.row.update(path=job.path, status="error", error=reason)
    say(f"error: {job.path}: {reason}", file=sys.stderr)


def _reason(e: Exception, path: str) -> str:
    """One line saying what went wrong; an ImageError about the scan itself without repeating its path."""
    from xai_bt.io.batches import one_line

    if getattr(e, "path", None) == path and getattr(e, "problem", None):
        return e.problem
    return one_line(e)


# --- the index and the summary ------------------------------------------------------------------

def write_index(out: Path, rows: list[dict[str, Any]]) -> Path:
    """Write `index.csv` atomically: these rows, plus earlier rows of scans not among them."""
    from xai_bt.io.batches import IndexFile

    index = IndexFile(Path(out) / INDEX, INDEX_FIELDS)
    index.append(rows)
    index.close()
    index.compact()
    return index.path


def _report(jobs: list[Job], earlier: list[dict[str, str]], index_path: Path, seconds: float) -> int:
    """One summary line, the failures listed again; exit 1 if any scan failed (in this run or, when
    resuming, in the run it finishes)."""
    before = {id(r) for r in earlier}
    counts = Counter(j.row.get("status") for j in jobs if j.row.get("status") and id(j.row) not in before)
    old = Counter(r.get("status") for r in earlier)
    done = f"; {len(earlier)} done earlier ({old['error']} of them failed)" if earlier else ""
    n = sum(counts.values()) - counts["skipped"]
    if n:
        print(f"{n} scans in {seconds:.1f} s ({n / max(seconds, 1e-9):.2f} scans/s)", file=sys.stderr)
    print(f"{counts['ok']} explained, {counts['skipped']} skipped, {counts['error']} failed{done}; "
          f"outputs and {index_path.name} in {index_path.parent}/", file=sys.stderr)
    failed = [(j.path, j.row["error"]) for j in jobs if j.row.get("status") == "error"]
    failed += [(r["path"], r.get("error", "")) for r in earlier if r.get("status") == "error"]
    for path, error in failed[:50]:
        print(f"  failed: {path}: {error}", file=sys.stderr)
    if len(failed) > 50:
        print(f"  ... and {len(failed) - 50} more (status 'error' in {index_path})", file=sys.stderr)
    return 1 if failed else 0

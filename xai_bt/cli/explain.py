"""`python -m xai_bt explain scan.jpg [more files | folders] [--list files.txt] [--methods gradcam,layercam|all] [--out DIR]`.

Writes, per scan, an annotated figure (`<stem>.png/.pdf`, or none with `--format none`), a JSON sidecar and
optionally the raw maps, plus `index.csv` in the output folder (one row per scan: ok / error / skipped).
The work is :func:`xai_bt.io.explain_files.explain_files` (streamed in batches, resumable, shardable); this
module parses the options, calls it and prints. `--resume` finishes a killed run without redoing finished
scans; `--shard K/N` explains every N-th scan of the sorted list into `index-K-of-N.csv`, and a final
`--resume` run without `--shard` merges the shards' indexes into `index.csv`. Bad files are reported and the
run goes on; existing outputs are kept unless --overwrite. Exit 0 when every scan was explained or skipped,
1 when any failed, 2 for usage errors.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from xai_bt.cli._common import (
    UsageError,
    add_model_options,
    check_numbers,
    fail,
    load_bundle,
    methods_help,
    parse_formats,
    parse_methods,
)

if TYPE_CHECKING:
    from xai_bt.io.explain_files import ExplainResult, ScanResult

#: failures listed again after the summary line (the rest are in the index)
SHOW_FAILURES = 50


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", help="scan files (JPEG, PNG, TIFF, DICOM) or folders (searched recursively)")
    p.add_argument("--list", dest="list_file", metavar="FILE",
                   help="text file of scan paths, one per line (relative to the file's folder)")
    p.add_argument("--model", help="model bundle, or your own Keras model file with --classes (default: the shipped default model)")
    p.add_argument("--methods", default=None,
                   help=methods_help("the model's audit-recommended method, else gradcam"))
    p.add_argument("--target", help="class to explain (default: each scan's predicted class)")
    p.add_argument("--layer", help="conv layer for the CAM methods: its name or path inside a nested backbone, e.g. mobilenetv2_1.00_224/out_relu (default: the bundle's last conv layer)")
    p.add_argument("--list-layers", action="store_true",
                   help="list the model's candidate CAM layers (paths and spatial size) and exit")
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
    add_model_options(p)


def main(args: argparse.Namespace) -> int:
    from xai_bt.io.explain_files import plan_explain
    from xai_bt.io.shards import parse_shard
    from xai_bt.model.bundle import default_model_path
    from xai_bt.model.provenance import default_methods

    try:
        formats = parse_formats(args.format)
        check_numbers(args.top_k, args.batch_size)
        shard = parse_shard(args.shard)
        if args.workers is not None and args.workers < 1:
            raise UsageError(f"--workers must be at least 1, got {args.workers}")
        if args.resume and args.overwrite:
            raise UsageError("--resume keeps finished scans and --overwrite redoes them: choose one")
        model = load_bundle(args.model or default_model_path(), args)
        methods = parse_methods(args.methods) if args.methods else list(default_methods(model, "explain"))
        if args.list_layers:
            return list_layers(model)
        if not args.inputs and not args.list_file:
            raise UsageError("give scan files or folders, or --list FILE")
        plan = plan_explain(model, args.inputs, args.out, list_file=args.list_file,
                            methods=methods, target=args.target, layer=args.layer, formats=formats,
                            top_k=args.top_k, mask=args.mask, save_maps=args.save_maps, overwrite=args.overwrite,
                            resume=args.resume, shard=shard, batch_size=args.batch_size, workers=args.workers)
    except (ValueError, OSError) as e:     # UsageError and BundleError are ValueErrors; OSError: missing input
        return fail(str(e))
    result = plan.run(progress=True, on_scan=print_scan)
    return print_summary(result)


def list_layers(bundle) -> int:
    """The network's spatial layers, input side first, with their size; the default CAM layer marked."""
    from xai_bt.model.layers import spatial_layer_shapes

    default = bundle.last_conv_layer
    rows = spatial_layer_shapes(bundle.model)
    width = max(len(path) for path, _ in rows)
    for path, (h, w, c) in rows:
        mark = "  <- default CAM layer" if path == default else ""
        print(f"{path:<{width}}  {h:>4} x {w:<4} x {c:>5}{mark}")
    print(f"{len(rows)} spatial layers in {bundle.name}; pass one as --layer (a unique tail of a path is enough)",
          file=sys.stderr)
    return 0


def print_scan(scan: ScanResult) -> None:
    """One line per scan as its fate is decided: the prediction and first file on stdout with a "warning:" line
    below it for each competence warning, problems on stderr (through tqdm, so the progress bar is redrawn
    below)."""
    from tqdm import tqdm

    if scan.status == "ok":
        tqdm.write(f"{scan.path}: {scan.prediction} ({scan.confidence:.3f}) -> {scan.figure}", file=sys.stdout)
        for warning in scan.warnings:
            tqdm.write(f"  warning: {warning}", file=sys.stdout)
    elif scan.status == "error":
        tqdm.write(f"error: {scan.path}: {scan.error}", file=sys.stderr)
    else:
        tqdm.write(f"skip: {scan.path}: {scan.existing or scan.figure} exists (pass --overwrite to replace)",
                   file=sys.stderr)


def print_summary(result: ExplainResult) -> int:
    """The rate, one summary line, the failures listed again; exit 1 if any scan failed (in this run or, when
    resuming, in the run it finishes)."""
    index = result.index
    done = f"; {result.done_earlier} done earlier ({result.failed_earlier} of them failed)" if result.done_earlier else ""
    n = result.attempted
    if n:
        print(f"{n} scans in {result.seconds:.1f} s ({n / max(result.seconds, 1e-9):.2f} scans/s)", file=sys.stderr)
    print(f"{result.ok} explained, {result.skipped} skipped, {result.failed} failed{done}; "
          f"outputs and {index.name} in {index.parent}/", file=sys.stderr)
    for path, error in result.failures[:SHOW_FAILURES]:
        print(f"  failed: {path}: {error}", file=sys.stderr)
    if len(result.failures) > SHOW_FAILURES:
        print(f"  ... and {len(result.failures) - SHOW_FAILURES} more (status 'error' in {index})", file=sys.stderr)
    return 1 if result.failures else 0

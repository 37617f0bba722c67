"""`python -m xai_bt predict scan.jpg [more files | folders] [--model PATH] [--json FILE]`.

One line per scan (class, confidence, every class probability, the view if the model has one), then one
"warning:" line per competence warning (the scan is unlike the model's training scans: a photo, a chart,
noise...; `xai_bt.model.competence`); bad files are reported and the rest still run (:func:`xai_bt.io.predict_files.predict_files`). Exit 0 when every file was
predicted, 1 when any failed, 2 for usage errors.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from xai_bt.cli._common import UsageError, add_model_options, fail, load_bundle


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="scan files (JPEG, PNG, TIFF, DICOM) or folders")
    p.add_argument("--model", help="model bundle, or your own Keras model file with --classes (default: the shipped default model)")
    p.add_argument("--json", help="also write the predictions to this JSON file")
    p.add_argument("--raw", action="store_true", help="raw probabilities, without temperature scaling")
    p.add_argument("--batch-size", type=int, default=32)
    add_model_options(p)


def main(args: argparse.Namespace) -> int:
    from xai_bt.data.decode import iter_image_files
    from xai_bt.io.predict_files import predict_files
    from xai_bt.model.bundle import BundleError, default_model_path

    missing = [p for p in args.inputs if not Path(p).exists()]   # bad input like any other: the rest still run
    files = iter_image_files([p for p in args.inputs if Path(p).exists()])
    if not files:
        return fail(f"{missing[0]}: no such file or folder" if missing else
                    f"no scan files found in {' '.join(args.inputs)}")
    if args.json and Path(args.json).exists():
        return fail(f"{args.json}: already exists; remove it or choose another name")
    if args.batch_size < 1:
        return fail(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        bundle = load_bundle(args.model or default_model_path(), args)
    except (BundleError, UsageError) as e:
        return fail(str(e))
    missing_rows = [{"path": p, "error": "no such file or folder"} for p in missing]
    for row in missing_rows:
        print_row(row)
    result = predict_files(bundle, files, batch_size=args.batch_size, calibrated=not args.raw, on_scan=print_row)
    result.failures[:0] = missing_rows
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if result.failures:
        print(f"{len(result.failures)} of {len(files) + len(missing)} files failed:", file=sys.stderr)
        for f in result.failures:
            print(f"  {f['path']}: {f['error']}", file=sys.stderr)
        return 1
    return 0


def print_row(row: dict[str, Any]) -> None:
    """A prediction on stdout in one line, its competence warnings on the lines below it, or a file that
    failed on stderr."""
    if "error" in row:
        print(f"error: {row['path']}: {row['error']}", file=sys.stderr)
        return
    probs = "  ".join(f"{k} {v:.3f}" for k, v in row["probabilities"].items())
    view = f"  view: {row['view']} ({max(row['view_probabilities'].values()):.2f})" if "view" in row else ""
    print(f"{row['path']}: {row['prediction']} ({row['confidence']:.3f})  [{probs}]{view}")
    for warning in row.get("warnings", ()):
        print(f"  warning: {warning}")

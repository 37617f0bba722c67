"""`python -m xai_bt predict scan.jpg [more files | folders] [--model PATH]`."""
from __future__ import annotations

import argparse
import json
import sys

from xai_bt.cli._common import fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="scan files (JPEG, PNG, TIFF, DICOM) or folders")
    p.add_argument("--model", help="model bundle (default: the shipped default model)")
    p.add_argument("--json", help="also write the predictions to this JSON file")
    p.add_argument("--raw", action="store_true", help="raw probabilities, without temperature scaling")
    p.add_argument("--batch-size", type=int, default=32)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from xai_bt.model.bundle import BundleError, default_model_path, iter_batches, load_model
    from xai_bt.data.decode import iter_image_files
    from xai_bt.data.sample import ImageError

    files = iter_image_files(args.inputs)
    missing = [p for p in args.inputs if not Path(p).exists()]
    if missing:
        return fail(f"{missing[0]}: no such file or folder")
    if not files:
        return fail(f"no scan files found in {' '.join(args.inputs)}")
    if args.json and Path(args.json).exists():
        return fail(f"{args.json}: already exists; remove it or choose another name")
    try:
        bundle = load_model(args.model or default_model_path())
    except BundleError as e:
        return fail(str(e))
    results, failures = [], []
    for batch in iter_batches(files, args.batch_size):
        ok, grays = [], []
        for f in batch:
            try:
                grays.append(bundle.prepare(f))
                ok.append(f)
            except ImageError as e:
                failures.append({"path": f, "error": e.problem})
                print(f"error: {e}", file=sys.stderr)
        if not ok:
            continue
        import numpy as np

        pred = bundle.predict_prepared(np.concatenate(grays), calibrated=not args.raw)
        for i, f in enumerate(ok):
            row = {"path": f, "prediction": pred.labels[i], "confidence": float(pred.confidence[i]),
                   "probabilities": dict(zip(pred.class_names, map(float, pred.probabilities[i])))}
            if pred.view_probabilities is not None:
                row["view"] = pred.views[i]
                row["view_probabilities"] = dict(zip(pred.view_names, map(float, pred.view_probabilities[i])))
            results.append(row)
            _print_row(row)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(bundle.path), "results": results,
                                               "failures": failures}, indent=2) + "\n")
    if failures:
        print(f"{len(failures)} of {len(files)} files failed:", file=sys.stderr)
        for f in failures:
            print(f"  {f['path']}: {f['error']}", file=sys.stderr)
        return 1
    return 0


def _print_row(row: dict) -> None:
    probs = "  ".join(f"{k} {v:.3f}" for k, v in row["probabilities"].items())
    view = f"  view: {row['view']} ({max(row['view_probabilities'].values()):.2f})" if "view" in row else ""
    print(f"{row['path']}: {row['prediction']} ({row['confidence']:.3f})  [{probs}]{view}")

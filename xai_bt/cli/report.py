"""`python -m xai_bt report scan.jpg | FOLDER [...] --out report.html [--model M] [--methods ...]`.

Writes one self-contained HTML review page for all the scans given: prediction, calibrated
probabilities, view, heatmaps, model card summary and what heatmaps do not show. Bad files are listed
in the page and the rest still run. Exit 0 when every scan was reviewed, 1 when any failed, 2 for
usage errors (including an existing --out without --overwrite).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xai_bt.cli._common import add_model_options, fail, methods_help


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="scan files (JPEG, PNG, TIFF, DICOM) or folders")
    p.add_argument("--out", required=True, help="the HTML file to write, e.g. report.html")
    p.add_argument("--model", help="model bundle, or your own Keras model file with --classes (default: the shipped default model)")
    p.add_argument("--view-model", help="view (plane) classifier bundle, for single-stage models")
    p.add_argument("--methods", default=None,
                   help=methods_help("the model's audit-recommended method and Grad-CAM; gradcam,layercam "
                                     "for a model without an audit recommendation"))
    p.add_argument("--top-k", type=float, default=0.1, help="fraction of pixels outlined per map (default: 0.1)")
    p.add_argument("--title", default="xai_bt review report", help="page title")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_model_options(p)


def main(args: argparse.Namespace) -> int:
    from xai_bt.cli._common import UsageError, check_numbers, load_bundle, parse_methods
    from xai_bt.data.decode import iter_image_files
    from xai_bt.model.bundle import BundleError, default_model_path, load_view_model

    out = Path(args.out)
    try:
        methods = parse_methods(args.methods) if args.methods else None
        check_numbers(args.top_k, 1)
        if out.is_dir():
            raise UsageError(f"{out}: is a folder; give a file name such as report.html")
        if out.exists() and not args.overwrite:
            raise UsageError(f"{out}: already exists; pass --overwrite to replace it")
        missing = [p for p in args.inputs if not Path(p).exists()]   # listed as failed; the rest still run
        files = iter_image_files([p for p in args.inputs if Path(p).exists()])
        if not files:
            raise UsageError(f"{missing[0]}: no such file or folder" if missing else
                             f"no scan files found in {' '.join(args.inputs)}")
        bundle = load_bundle(args.model or default_model_path(), args)
        view_bundle = load_view_model(args.view_model) if args.view_model else None
    except (UsageError, BundleError) as e:
        return fail(str(e))
    from xai_bt.review.case import review_failure

    cases = [review_failure(p, "no such file or folder") for p in missing]
    for case in cases:
        print(f"error: {case['name']}: {case['error']}", file=sys.stderr)
    cases += review_files(files, bundle, methods, view_bundle, args.top_k)
    return write(cases, bundle, out, args)


def review_files(files: list[str], bundle, methods: list[str] | None, view_bundle, top_k: float) -> list[dict]:
    """Review each file in turn; a bad file or a failed explanation only fails its own entry."""
    from tqdm import tqdm

    from xai_bt.review.case import review_failure, review_scan
    cases = []
    for path in tqdm(files, unit="scan", file=sys.stderr, desc="reviewing",
                     disable=None if len(files) >= 2 else True):
        try:
            case = review_scan(bundle, path, methods=methods, view_bundle=view_bundle, top_k=top_k)
            print(f"{path}: {case['prediction']} ({case['confidence']:.3f})")
            for warning in case["warnings"]:
                print(f"  warning: {warning}")
        except Exception as e:  # ImageError, or one scan's explanation failing: keep the others
            case = review_failure(path, e)
        if case["status"] != "ok":
            print(f"error: {path}: {case['error']}", file=sys.stderr)
        cases.append(case)
    return cases


def write(cases: list[dict], bundle, out: Path, args: argparse.Namespace) -> int:
    """Render and write the page; summary line; exit 1 if any scan failed."""
    from xai_bt.review.case import model_summary
    from xai_bt.review.html import render_report, write_report

    try:
        write_report(out, render_report(cases, model_summary(bundle), title=args.title), overwrite=args.overwrite)
    except (OSError, FileExistsError) as e:
        return fail(f"cannot write the report ({e})", 1)
    failed = [c for c in cases if c["status"] != "ok"]
    print(f"{len(cases) - len(failed)} reviewed, {len(failed)} failed; report in {out}", file=sys.stderr)
    for c in failed:
        print(f"  failed: {c['name']}: {c['error']}", file=sys.stderr)
    return 1 if failed else 0

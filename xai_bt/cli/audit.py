"""`python -m xai_bt audit MODEL --data ROOT --out DIR`: does the explanation look at the tumor?

Writes scores.csv (one row per scan and method), summary.json (means with bootstrap 95% CIs, overall,
per class and per plane; the wall time) and report.html (self-contained) into --out.
The default run and `--stream` share one batch loop (:mod:`xai_bt.audit.runner`); `--stream` (implied by --resume and --shard) keeps
no row in memory: score rows are appended to scores.csv per batch (unusable scans to skipped.csv) and the
summary is computed from the CSV at the end; `--shard K/N` audits every N-th scan into scores-K-of-N.csv, and a
final `--resume` run without --shard merges the shards and writes the summary. Progress messages (logger
`xai_bt.audit`) and bars go to stderr, the results table to stdout.

Without --methods it audits the bundle's candidates (`provenance.default_methods(bundle, "audit")`: the
recommended method first, the audit defaults, Layer-CAM and HiResCAM on finer layers, their fusion). At the end
it names the explanation to show first (`xai_bt.audit.recommend`) and, for a bundle folder, stores it in its
bundle.json (`--no-store` leaves the bundle as it is), where explain, report and serve read it.
"""
from __future__ import annotations

import argparse
import shlex
import time
from typing import TYPE_CHECKING

from xai_bt.cli._common import add_model_options, add_threshold, fail, methods_help

if TYPE_CHECKING:
    from xai_bt.audit.runner import AuditConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model bundle folder, or your own Keras model file (.keras, .h5) with --classes")
    p.add_argument("--data", required=True, help="dataset with tumor masks (BRISC, figshare .mat, or any "
                                                 "layout with --masks / --boxes)")
    p.add_argument("--masks", help="folder of mask images (matched to scans by file stem) or a CSV "
                                   "'file,mask' (files relative to --data, masks to the CSV's folder)")
    p.add_argument("--boxes", help="folder of YOLO box files 'class xc yc w h' (matched by stem): boxes as masks")
    p.add_argument("--methods", help=methods_help(
        "the bundle's recommended method, then the audit defaults, Layer-CAM and HiResCAM on the last layer of "
        "each finer resolution, and Layer-CAM fused over layers"))
    p.add_argument("--layer", help="conv layer for the CAM methods (default: the bundle's last conv layer)")
    p.add_argument("--target", choices=("true", "predicted"), default="true",
                   help="class to explain: the annotated tumor class (default) or the model's prediction")
    p.add_argument("--limit", type=int, help="audit at most N scans (a seeded random subset)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--unseen-only", dest="unseen_only", action="store_true", default=True,
                       help="only scans with no twin (as they are, mirrored, flipped) among the bundle's "
                            "training rows (default)")
    which.add_argument("--all", dest="unseen_only", action="store_false",
                       help="every scan with a mask, including ones the model was trained on")
    p.add_argument("--train-data", help="where the bundle's training data is now (default: the recorded path); "
                                        "for your own Keras model, what it learnt from")
    add_threshold(p, "the unseen selection")
    p.add_argument("--tolerance", type=float, help="pointing-game tolerance in pixels at model resolution "
                                                   "(default: 3%% of the input side)")
    p.add_argument("--faithfulness", nargs="?", type=int, const=50, default=0, metavar="N",
                   help="deletion / insertion and ROAD on N scans (default N: 50)")
    p.add_argument("--sanity", type=int, default=0, metavar="N",
                   help="cascading model-randomisation check on N scans (0: skip)")
    p.add_argument("--gallery", type=int, default=4, help="best and worst scans shown per method (default 4)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="seed of the random subsets")
    p.add_argument("--out", required=True, help="output folder, e.g. audits/NAME")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier audit in --out")
    p.add_argument("--stream", action="store_true",
                   help="stream scans in batches, appending score rows per batch (flat memory for large sets)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted streamed audit (implies --stream)")
    p.add_argument("--shard", metavar="K/N", help="audit only shard K of N of the scans (implies --stream)")
    p.add_argument("--workers", type=int, help="scans decoded in parallel (default: tf.data's AUTOTUNE)")
    p.add_argument("--no-store", dest="store", action="store_false",
                   help="do not store the recommended explanation in the bundle's bundle.json")
    add_model_options(p)


def main(args: argparse.Namespace) -> int:
    from xai_bt.audit.runner import check_out, run_audit, write_audit
    from xai_bt.cli._common import UsageError, load_bundle, parse_methods
    from xai_bt.model.bundle import BundleError

    start = time.perf_counter()
    try:
        bundle = load_bundle(args.model, args)
        if args.methods is None:                    # recorded in summary.json's command as it was run
            from xai_bt.model.provenance import default_methods

            args.methods = ",".join(default_methods(bundle, "audit"))
        config = _config(args, parse_methods(args.methods))
        if args.stream or args.resume or args.shard:
            return _streamed(args, bundle, config, start)
        check_out(args.out, args.overwrite)
        result = run_audit(bundle, args.data, config)
        paths = write_audit(result, args.out, overwrite=args.overwrite, command=command_line(args))
    except (UsageError, BundleError, FileExistsError, FileNotFoundError, ValueError) as e:
        hint = (" (pass --train-data ROOT, or --all to audit every scan)"
                if "split.csv" in str(e) or "training data" in str(e) else
                " (every one has a twin among the training scans; --all audits them anyway)"
                if "unseen in training" in str(e) else "")
        return fail(f"{e}{hint}")
    _print_summary(result.summary)
    _recommend(args, result.summary)
    print(f"wrote {', '.join(str(p) for p in paths)} in {time.perf_counter() - start:.0f} s")
    return 0


def _recommend(args: argparse.Namespace, summary: dict) -> None:
    """Name the explanation to show first and, for a bundle folder unless --no-store, store it there."""
    from pathlib import Path

    from xai_bt.audit.recommend import recommend, score_line, store

    rec = recommend(summary)
    checks = "" if rec["passed_checks"] else " (no method passed the faithfulness and randomisation checks)"
    unmeasured = [what for what, key in (("faithfulness", "faithful"), ("randomisation", "passes_randomisation"))
                  if rec[key] is None]
    if unmeasured:
        checks += f" ({' and '.join(unmeasured)} not measured: --faithfulness N, --sanity N)"
    print(f"recommended explanation: {rec['method']}{checks}; {score_line(rec, rec['method'])}")
    if args.store and Path(args.model).is_dir():
        store(args.model, rec)
        print(f"stored in {Path(args.model) / 'bundle.json'} (\"explanation\"): explain, report and serve show it "
              "first")


def _config(args: argparse.Namespace, methods: list[str]) -> AuditConfig:
    """The AuditConfig the options describe; UsageError names a bad option."""
    from xai_bt.audit.runner import AuditConfig
    from xai_bt.cli._common import UsageError

    for name in ("limit", "batch_size", "gallery", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return AuditConfig(methods=tuple(methods), masks=args.masks, boxes=args.boxes, unseen_only=args.unseen_only,
                       train_data=args.train_data, limit=args.limit, layer=args.layer, target=args.target,
                       tolerance_px=args.tolerance, threshold=args.threshold, faithfulness=args.faithfulness,
                       sanity=args.sanity, batch_size=args.batch_size, gallery_size=args.gallery, seed=args.seed,
                       workers=args.workers, progress=True)


def _streamed(args: argparse.Namespace, bundle, config: AuditConfig, start: float) -> int:
    """The streaming audit (rows to CSV per batch); errors propagate to main's one-line handler."""
    from xai_bt.audit.runner import stream_audit
    from xai_bt.cli._common import UsageError
    from xai_bt.io.shards import parse_shard

    if args.resume and args.overwrite:
        raise UsageError("--resume keeps finished scans and --overwrite redoes them: choose one")
    summary = stream_audit(bundle, args.data, args.out, config, resume=args.resume, overwrite=args.overwrite,
                           shard=parse_shard(args.shard), command=command_line(args))
    if summary is not None:
        _print_summary(summary)
        _recommend(args, summary)
        print(f"wrote scores.csv, skipped.csv, summary.json, report.html in {args.out} "
              f"in {time.perf_counter() - start:.0f} s")
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The audit as one shell command, every option spelled out (recorded in summary.json)."""
    words = ["python", "-m", "xai_bt", "audit", args.model, "--data", args.data]
    for name in ("classes", "pixel_scale", "input_size", "masks", "boxes", "methods", "layer", "target", "limit",
                 "train_data", "threshold", "tolerance", "faithfulness", "sanity", "gallery", "batch_size", "seed",
                 "out"):
        value = getattr(args, name)
        if value not in (None, 0):
            words += [f"--{name.replace('_', '-')}", str(value)]
    if getattr(args, "crop_to_head", None) is not None:
        words.append("--crop-to-head" if args.crop_to_head else "--no-crop-to-head")
    words.append("--unseen-only" if args.unseen_only else "--all")
    if getattr(args, "stream", False) or getattr(args, "resume", False) or getattr(args, "shard", None):
        words.append("--stream")
    return shlex.join(words + (["--overwrite"] if args.overwrite else []))


def _print_summary(summary: dict) -> None:
    """Pointing game and energy pointing game per method, with their 95% CIs."""
    print(f"{summary['n_images']} scans; {summary['unseen_definition']}")
    print(f"{'method':<22} {'pointing game':>26} {'energy pointing game':>26}")
    for method, block in summary["scores"].items():
        cells = []
        for name in ("pointing_game", "energy_pointing_game"):
            e = block["all"][name]
            cells.append("-" if e["mean"] is None else f"{e['mean']:.3f} [{e['low']:.3f}, {e['high']:.3f}]")
        print(f"{method:<22} {cells[0]:>26} {cells[1]:>26}")
    chance = summary["chance"]["all"]["mask_fraction"]["mean"]
    print(f"chance level of the energy pointing game (mean mask area): {chance:.3f}")

"""`python -m xai_bt evaluate MODEL --data ROOT`: official and leakage-free test metrics."""
from __future__ import annotations

import argparse

from xai_bt.cli._common import UsageError, add_model_options, add_threshold, fail, load_bundle


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model bundle folder, or your own Keras model file (.keras, .h5) with --classes")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--out", help="write metrics.json, metrics.csv and predictions.csv to this folder")
    add_threshold(p, "the leakage-free set")
    p.add_argument("--train-data", help="for the leakage check: where the bundle's training data is now, if it "
                                        "moved (default: the path recorded at training); for your own Keras "
                                        "model, what it learnt from (a dataset's training split, or a folder)")
    p.add_argument("--raw", action="store_true", help="without temperature scaling")
    p.add_argument("--update-card", action="store_true", help="store the metrics in the bundle and its card")
    p.add_argument("--overwrite", action="store_true", help="replace existing files in --out")
    p.add_argument("--batch-size", type=int, default=64)
    add_model_options(p)


def main(args: argparse.Namespace) -> int:
    from xai_bt.evaluation.evaluate import evaluate_bundle, summary_text
    from xai_bt.model.bundle import BundleError

    try:
        results = evaluate_bundle(load_bundle(args.model, args), args.data, threshold=args.threshold, batch_size=args.batch_size,
                        calibrated=not args.raw, write=args.update_card, out=args.out, overwrite=args.overwrite,
                        train_data=args.train_data)
    except (BundleError, UsageError, FileExistsError, ValueError, FileNotFoundError) as e:
        return fail(str(e))
    print(summary_text(results))
    return 0

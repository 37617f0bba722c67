"""`python -m xai_bt calibrate MODEL --data ROOT`: fit temperature scaling on the model's validation split.

The temperature is stored in the bundle (bundle.json `temperature` and `calibration`), so every later
prediction, explanation and evaluation uses it; `evaluate --raw` and `figures` show the model without it.
"""
from __future__ import annotations

import argparse

from xai_bt.cli._common import fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model bundle folder (import your own Keras model first: xai_bt import-model)")
    p.add_argument("--data", required=True,
                   help="the model's training data root (split.csv paths are relative to it); only the "
                        "rows with split 'val' are used. For an imported model: a folder of held-out "
                        "validation scans (never trained on, not the test set), all of which are used")
    p.add_argument("--train-data", help="an imported model's training scans: validation scans with a twin "
                                        "among them are left out")
    p.add_argument("--held-out", metavar="ROOT",
                   help="fit on the labelled scans under ROOT instead (for a model refitted on all its training "
                        "data, which has no validation rows), less the twins of every scan of the bundle's "
                        "split.csv: its training scans and its test scans")
    p.add_argument("--class-bias", choices=("no", "yes", "auto"), default="no",
                   help="also fit per-class logit biases (bias-corrected temperature scaling, class-balanced "
                        "NLL), which can change the predicted class: yes, auto (only if they lower the k-fold, "
                        "k <= 5, cross-validated NLL of the same scans) or no (default; drops stored biases)")
    p.add_argument("--overwrite", action="store_true", help="refit and replace an existing temperature")
    p.add_argument("--bins", type=int, default=15, help="confidence bins for ECE/MCE (default 15)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--tta", choices=("none", "hflip"),
                   help="set the test-time augmentation (hflip: average with the mirrored scan) before "
                        "fitting; stored in the bundle and used by every prediction (default: keep)")


def main(args: argparse.Namespace) -> int:
    from xai_bt.evaluation.temperature import calibrate_bundle, format_record
    from xai_bt.model.bundle import BundleError

    try:
        record = calibrate_bundle(args.model, args.data, overwrite=args.overwrite, batch_size=args.batch_size,
                                  n_bins=args.bins, tta=args.tta, train_data=args.train_data,
                                  held_out=args.held_out, class_bias=args.class_bias)
    except (BundleError, FileExistsError, ValueError, FileNotFoundError) as e:
        return fail(str(e))
    print(f"{args.model}: {record['method']}; test-time augmentation: {record['tta']}")
    print(format_record(record))
    print(f"stored in {args.model}/bundle.json")
    return 0

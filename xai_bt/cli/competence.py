"""`python -m xai_bt competence MODEL --data ROOT`: fit the competence checks of a model and store them in its bundle.

Fits the feature check (how far a scan's features are from the model's training scans: reference from the
split.csv rows with split 'train', threshold from the twin-free 'val' rows) and records it with the image
checks' false alarms on the validation scans in bundle.json "competence", where `predict`, `explain`,
`report` and `serve` read it. A bundle without it still gets the image checks.
"""
from __future__ import annotations

import argparse

from xai_bt.cli._common import fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model bundle folder (with the split.csv it was trained with)")
    p.add_argument("--data", required=True,
                   help="the model's training data root (split.csv paths are relative to it): the reference comes "
                        "from its 'train' rows, the threshold from its 'val' rows without twins of training scans")
    p.add_argument("--held-out", metavar="ROOT",
                   help="take the threshold from the labelled scans under ROOT instead (a refitted model has no "
                        "'val' rows), less the twins of every scan of the bundle's split.csv")
    p.add_argument("--overwrite", action="store_true", help="refit and replace existing competence checks")
    p.add_argument("--batch-size", type=int, default=64)


def main(args: argparse.Namespace) -> int:
    from xai_bt.model.bundle import BundleError
    from xai_bt.model.competence import fit_competence, format_record

    if args.batch_size < 1:
        return fail(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        record = fit_competence(args.model, args.data, overwrite=args.overwrite, batch_size=args.batch_size,
                                held_out=args.held_out)
    except (BundleError, FileExistsError, ValueError, FileNotFoundError) as e:
        return fail(str(e))
    print(f"{args.model}: competence checks fitted")
    print(format_record(record))
    print(f"stored in {args.model}/bundle.json (\"competence\")")
    return 0

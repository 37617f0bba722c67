"""`python -m xai_bt soup OUT A B [--weights 0.7,0.3]`: one bundle from the weighted mean of fine-tunes' weights.

The usual pair is a classifier and its focus-guided fine-tune (`train --init-from A --focus-masks ...`);
then refit what depends on the outputs: `calibrate OUT --data ROOT` (it prints the validation numbers to
choose the weights on), `competence`, `evaluate`, `audit`.
"""
from __future__ import annotations

import argparse

from xai_bt.cli._common import fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="folder for the new bundle")
    p.add_argument("bundles", nargs="+", help="two or more bundles fine-tuned from one start, on one split.csv; "
                                              "the first gives the configuration and training record")
    p.add_argument("--weights", help="comma-separated mixing weights, one per bundle (normalised to sum to 1; "
                                     "default: equal)")
    p.add_argument("--overwrite", action="store_true", help="replace a bundle already at OUT")


def main(args: argparse.Namespace) -> int:
    from xai_bt.model.bundle import BundleError
    from xai_bt.model.soup import soup_bundles

    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            return fail(f"--weights: expected numbers separated by commas, got {args.weights!r}")
    try:
        out = soup_bundles(args.bundles, args.out, weights, overwrite=args.overwrite)
    except (BundleError, FileExistsError, ValueError, FileNotFoundError) as e:
        return fail(str(e))
    from xai_bt.model.bundle import read_config

    mix = ", ".join(f"{i['name']} {i['weight']:.3g}" for i in read_config(out)["soup"]["ingredients"])
    print(f"{out}: weights averaged ({mix}); temperature reset to 1 and test-time augmentation to none: "
          f"refit them with `python -m xai_bt calibrate {out} --data ROOT`")
    return 0

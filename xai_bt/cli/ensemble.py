"""`python -m xai_bt ensemble OUT A B [C ...]`: one bundle whose network is the mean of several models' logits.

The members are single-network bundles with one class list, preprocessing and split.csv (e.g. two seeds of one
recipe, `train --split A/split.csv --seed 1`). The ensemble is one network, so every command works on it; its
CAM layers join the members' channels, so its heatmaps explain the ensemble. Then refit what depends on the
outputs: `calibrate OUT --data ROOT` (it prints the validation numbers to compare it on), `competence`,
`evaluate`, `audit`.
"""
from __future__ import annotations

import argparse

from xai_bt.cli._common import fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="folder for the new bundle")
    p.add_argument("bundles", nargs="+", help="two or more single-network bundles trained on one split.csv; "
                                              "the first gives the configuration and training record")
    p.add_argument("--overwrite", action="store_true", help="replace a bundle already at OUT")


def main(args: argparse.Namespace) -> int:
    from xai_bt.model.bundle import BundleError, read_config
    from xai_bt.model.ensemble import ensemble_bundles

    try:
        out = ensemble_bundles(args.bundles, args.out, overwrite=args.overwrite)
    except (BundleError, FileExistsError, ValueError, FileNotFoundError) as e:
        return fail(str(e))
    ens = read_config(out)["ensemble"]
    names = ", ".join(m["name"] for m in ens["members"])
    print(f"{out}: one network, the mean of the logits of {names}; layers joined for CAMs: "
          f"{', '.join(ens['joined_layers'])}; temperature reset to 1 and test-time augmentation to none: "
          f"refit them with `python -m xai_bt calibrate {out} --data ROOT`")
    return 0

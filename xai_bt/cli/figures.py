"""`python -m xai_bt figures MODEL [MODEL ...] --data ROOT --out DIR`: the paper's evaluation figures.

Per model: ROC (bootstrap CIs), precision-recall, confusion matrices, reliability diagrams raw vs
temperature-scaled (overall and per class, with bin counts), training curves, and metric tables (CSV,
Markdown, LaTeX), on the official test split and its leakage-free subset. Across models: accuracy with
CIs, official vs leakage-free. See `xai_bt.evaluation.paper` for the file list.
"""
from __future__ import annotations

import argparse

from xai_bt.cli._common import add_threshold, fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL", help="model bundle folder(s)")
    p.add_argument("--data", required=True, help="dataset root to evaluate on")
    p.add_argument("--out", required=True, help="output folder (one subfolder per model)")
    p.add_argument("--formats", default="png,pdf", help="comma-separated figure formats (default png,pdf)")
    p.add_argument("--overwrite", action="store_true", help="replace existing figures and tables")
    add_threshold(p, "the leakage-free subset")
    p.add_argument("--train-data", help="where the models' training data is now, if it moved")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for AUC CIs (default 1000)")
    p.add_argument("--bins", type=int, default=15, help="confidence bins for reliability diagrams (default 15)")
    p.add_argument("--batch-size", type=int, default=64)


def main(args: argparse.Namespace) -> int:
    from xai_bt.evaluation.paper import make_figures, summary_text
    from xai_bt.model.bundle import BundleError

    try:
        result = make_figures(args.models, args.data, args.out, formats=args.formats, overwrite=args.overwrite,
                              threshold=args.threshold, batch_size=args.batch_size, train_data=args.train_data,
                              n_boot=args.n_boot, n_bins=args.bins)
    except (BundleError, FileExistsError, ValueError, FileNotFoundError) as e:
        return fail(str(e))
    print(summary_text(result))
    print(f"wrote {len(result['paths'])} files to {args.out}")
    return 0

"""Command-line entry: `python -m xai_bt <command> --help`.

Each command lives in `xai_bt/cli/<name>.py` (`import-model`: `import_model.py`) with `add_arguments(parser)` and `main(args) -> int`;
modules are imported only when their command runs, so `--help` is instant. A command only parses its options,
calls the library (e.g. `xai_bt.io.explain_files`) and prints; helpers they share are in `_common`.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

COMMANDS = {
    "predict": "class probabilities (and the view) for scans",
    "explain": "annotated heatmap figures for scans",
    "train": "train a classifier on a dataset and save a model bundle",
    "evaluate": "metrics on the official and the leakage-free test split",
    "data": "dataset summary and near-duplicate (leakage) audit, leakage-free splits",
    "figures": "paper figures: ROC, calibration, confusion matrices, training curves",
    "audit": "focus audit: does the explanation (and the model) look at the tumor?",
    "calibrate": "fit temperature scaling on a validation split and store it in the bundle",
    "competence": "fit the checks that warn when a scan is unlike the training scans, store them in the bundle",
    "report": "one self-contained HTML review page: prediction, heatmaps, model card, caveats",
    "serve": "local web page: upload a scan, see its review (127.0.0.1 by default)",
    "import-model": "wrap your own Keras classifier (.keras, .h5) into a model bundle with a model card",
}


def _module(name: str):
    return importlib.import_module(f"xai_bt.cli.{name.replace('-', '_')}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m xai_bt",
                                     description="xai_bt: explainability-first brain-tumor MRI classification")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_ in COMMANDS.items():
        if importlib.util.find_spec(f"xai_bt.cli.{name.replace('-', '_')}") is None:
            continue
        p = sub.add_parser(name, help=help_, description=help_)
        if only in (None, name):
            _module(name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        from xai_bt.cli._common import messages_to_stderr

        with messages_to_stderr():
            return int(_module(args.command).main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

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
    "soup": "average the weights of fine-tunes of one model into one bundle (model soup, WiSE-FT)",
    "ensemble": "one network from several models: the mean of their logits (a deep ensemble)",
    "competence": "fit the checks that warn when a scan is unlike the training scans, store them in the bundle",
    "report": "one self-contained HTML review page: prediction, heatmaps, model card, caveats",
    "serve": "local web page: upload a scan, see its review (127.0.0.1 by default)",
    "import-model": "wrap your own Keras classifier (.keras, .h5) into a model bundle with a model card",
}


#: commands that never load a network, so they do not import TensorFlow
_NO_NETWORK = frozenset({"data"})
#: what TensorFlow's C++ core writes to the terminal on import, whatever TF_CPP_MIN_LOG_LEVEL says (TF 2.21)
_STARTUP_NOISE = ("before absl::InitializeLog() is called", "oneDNN custom operations are on",
                  "This TensorFlow binary is optimized", "To enable the following instructions",
                  "rebuild TensorFlow with the appropriate compiler flags", "Unable to register cu",
                  "computation placer already registered", "could not open file to read NUMA node")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow (on the tensorflow backend) with its start-up notices kept off the terminal: they
    are written by its C++ core straight to file descriptor 2, so they are caught there, and anything else
    written during the import (a real error or warning) is passed on."""
    import tempfile

    if "tensorflow" in sys.modules or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
        except ImportError:
            pass                      # the command that needs it says so
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        caught.seek(0)
        text = caught.read().decode(errors="replace")
    sys.stderr.write("".join(line for line in text.splitlines(keepends=True)
                             if not any(n in line for n in _STARTUP_NOISE)))


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

        if args.command not in _NO_NETWORK:
            import_tensorflow_quietly()
        with messages_to_stderr():
            return int(_module(args.command).main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

"""Helpers every command shares: the one-line error, the twin threshold option, and checks of what the user asked for."""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator

from xai_bt.io.explain_files import FIGURE_FORMATS, check_formats


def fail(message: str, code: int = 2) -> int:
    """Print a one-line error for the user and return the exit code."""
    print(f"error: {message}", file=sys.stderr)
    return code


class _TqdmHandler(logging.Handler):
    """Log records as bare lines on stderr, written through tqdm so a progress bar stays intact."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


@contextlib.contextmanager
def messages_to_stderr(name: str = "xai_bt", level: int = logging.INFO) -> Iterator[None]:
    """While a command runs, show the library's log messages (training progress, 'resume: 10 of 40 scans
    already done', the web server's access log) as bare lines on stderr; the library itself never prints."""
    logger = logging.getLogger(name)
    handler, before = _TqdmHandler(level), logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


def add_threshold(p: argparse.ArgumentParser, what: str) -> None:
    """The near-duplicate `--threshold` option, with the project's one default (xai_bt.data.twins)."""
    from xai_bt.data.twins import TWIN_THRESHOLD

    p.add_argument("--threshold", type=float, default=TWIN_THRESHOLD,
                   help=f"twin threshold for {what}: Pearson r of 32x32 thumbnails, compared as they are, mirrored, "
                        f"flipped and turned (default {TWIN_THRESHOLD}, chosen in audits/twins/)")


#: figure formats `explain` writes (lossless, for papers)
FORMATS = FIGURE_FORMATS


class UsageError(ValueError):
    """A command-line value that cannot work; the message is shown as one line, exit code 2."""


def methods_help(default: str) -> str:
    """--methods' help: every registered method (the names `parse_methods` accepts), and the default."""
    from xai_bt.attribution import registry

    return (f"comma-separated methods, or 'all' (default: {default}); one of: {', '.join(registry.names())} "
            "(slow: " + ", ".join(m for m in registry.names() if registry.spec(m).slow) + "); a CAM method "
            f"may name its own layer, e.g. layercam{registry.LAYER_SEP}block6a_expand_activation")


def _lowered_method(name: str) -> str:
    """A method name in lower case; a layer after it ("layercam@Conv_1") keeps its case."""
    base, sep, layer = name.partition("@")
    return base.lower() + sep + layer


def parse_methods(text: str) -> list[str]:
    """'gradcam,layercam' or 'all' -> registered method names, in the order given (`registry.check_methods`)."""
    from xai_bt.attribution import registry

    names = [_lowered_method(m.strip()) for m in text.split(",") if m.strip()]
    try:
        return list(registry.check_methods("all" if text.strip().lower() == "all" else names))
    except ValueError:
        unknown = [m for m in names if m not in registry.names()]
        raise UsageError(f"unknown method {unknown[0] if unknown else text!r}; "
                         f"choose from {', '.join(registry.names())} or all") from None


def parse_formats(text: str) -> list[str]:
    """'png,pdf' -> ['png', 'pdf']; only formats matplotlib writes losslessly for papers. 'none' -> [] (no
    figures: the JSON sidecar, and maps with --save-maps, only; the fast setting for large archives).
    The checking is `io.explain_files.check_formats`'; here a bad value is a UsageError."""
    try:
        names = check_formats(text)
    except ValueError as e:
        raise UsageError(f"{e} or none") from None
    if not names and text.strip().lower() != "none":
        raise UsageError(f"unknown figure format {text!r}; choose from {', '.join(FORMATS)} or none")
    return names


def check_numbers(top_k: float, batch_size: int) -> None:
    """--top-k must be a fraction in (0, 1] and --batch-size positive."""
    if not 0 < top_k <= 1:
        raise UsageError(f"--top-k is a fraction of pixels in (0, 1], got {top_k}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")


def resolve_target(name: str | None, class_names: tuple[str, ...]) -> str | None:
    """--target as one of the model's class names (dataset spellings such as 'notumor' accepted)."""
    from xai_bt.io.explain_files import resolve_target as resolve

    try:
        return resolve(name, class_names)
    except ValueError as e:
        raise UsageError(str(e)) from None


def add_model_options(p: argparse.ArgumentParser) -> None:
    """What a Keras model file made outside xai_bt needs (`--model my_model.keras --classes ...`): its
    classes in output order and, where it cannot be read from the file, how it expects its input."""
    from xai_bt.model.imported import PIXEL_SCALES

    g = p.add_argument_group("your own Keras model (.keras, .h5, SavedModel folder) instead of an xai_bt bundle")
    g.add_argument("--classes", metavar="A,B,...|FILE",
                   help="the model's classes in its output order, comma-separated or a labels file "
                        "(one per line); 'notumor' etc. are read as no_tumor")
    g.add_argument("--pixel-scale", choices=list(PIXEL_SCALES), metavar="SCALE",
                   help="the pixel scaling the model expects: " + "; ".join(f"{k}: {v}" for k, v in PIXEL_SCALES.items())
                        + " (default: 0-1, recorded as assumed)")
    g.add_argument("--input-size", type=int, metavar="PX", help="input side in pixels (default: read from the model)")
    g.add_argument("--crop-to-head", action=argparse.BooleanOptionalAction, default=None,
                   help="crop each scan to the head before resizing, as xai_bt's own models do "
                        "(default: no, the whole image is resized, recorded as assumed)")


def load_bundle(path, args: argparse.Namespace):
    """The model a command runs on: an xai_bt bundle folder, or a Keras model file wrapped in memory with
    `--classes` and the input options; BundleError (one line naming the file) when neither works."""
    from xai_bt.model.bundle import BundleError, load_model
    from xai_bt.model.imported import is_model_file

    given = [f"--{k.replace('_', '-')}" for k in ("classes", "pixel_scale", "input_size", "crop_to_head")
             if getattr(args, k, None) is not None]
    if is_model_file(path):
        if getattr(args, "classes", None) is None:
            raise BundleError(f"{path}: a Keras model, not an xai_bt bundle: pass --classes with its classes in "
                              "output order (e.g. --classes glioma,meningioma,no_tumor,pituitary)")
        return load_model(path, args.classes, pixel_scale=args.pixel_scale, image_size=args.input_size,
                          crop_to_head=args.crop_to_head)
    if given:
        raise UsageError(f"{given[0]} is for a Keras model file (.keras, .h5, SavedModel); the bundle {path} "
                         "records its classes and preprocessing")
    return load_model(path)

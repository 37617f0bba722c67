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


def parse_methods(text: str) -> list[str]:
    """'gradcam,layercam' or 'all' -> registered method names, in the order given (`registry.check_methods`)."""
    from xai_bt.attribution import registry

    names = [m.strip().lower() for m in text.split(",") if m.strip()]
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

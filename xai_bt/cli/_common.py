"""One module per CLI command: `add_arguments(parser)` and `main(args) -> int`."""
from __future__ import annotations

import argparse
import sys


def fail(message: str, code: int = 2) -> int:
    """Print a one-line error for the user and return the exit code."""
    print(f"error: {message}", file=sys.stderr)
    return code


def add_threshold(p: argparse.ArgumentParser, what: str) -> None:
    """The near-duplicate `--threshold` option, with the project's one default (xai_bt.data.twins)."""
    from xai_bt.data.twins import TWIN_THRESHOLD

    p.add_argument("--threshold", type=float, default=TWIN_THRESHOLD,
                   help=f"twin threshold for {what}: Pearson r of 32x32 thumbnails, compared as they are, mirrored, "
                        f"flipped and turned (default {TWIN_THRESHOLD}, chosen in audits/twins/)")

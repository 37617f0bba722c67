"""One module per CLI command: `add_arguments(parser)` and `main(args) -> int`."""
from __future__ import annotations

import sys


def fail(message: str, code: int = 2) -> int:
    """Print a one-line error for the user and return the exit code."""
    print(f"error: {message}", file=sys.stderr)
    return code

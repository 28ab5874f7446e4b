"""containerd-shim-kata-v2 entry point (its issue has not landed yet)."""

from __future__ import annotations

import sys

from kata.errors import EXIT_USAGE

__all__ = ["main"]


def main() -> int:
    """Exit 2: the shim v2 arrives with its own issue."""
    print("containerd-shim-kata-v2: error: not implemented yet", file=sys.stderr)
    return EXIT_USAGE

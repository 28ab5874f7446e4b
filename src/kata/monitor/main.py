"""kata-monitor entry point (its issue has not landed yet)."""

from __future__ import annotations

import sys

from kata.errors import EXIT_USAGE

__all__ = ["main"]


def main() -> int:
    """Exit 2: kata-monitor arrives with its own issue."""
    print("kata-monitor: error: not implemented yet", file=sys.stderr)
    return EXIT_USAGE

"""`kata-runtime version`: versions of pykata and the specs it implements."""

from __future__ import annotations

import argparse
import platform

from kata import __version__
from kata.cli.context import CliContext

__all__ = ["OCI_VERSION", "add_arguments", "run"]

OCI_VERSION = "1.1.0"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    del ctx, args
    print(f"kata-runtime  : {__version__}\n   python     : {platform.python_version()}\n"
          f"   OCI specs  : {OCI_VERSION}")
    return 0

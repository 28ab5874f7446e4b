"""`kata-runtime image build`: build the guest image (placeholder until the builder lands)."""

from __future__ import annotations

import argparse

from kata.cli.context import CliContext
from kata.errors import NotImplementedYetError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="image_command", required=True, metavar="SUBCOMMAND")
    sub.add_parser("build", help="build the guest initrd (and optional rootfs image)")


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    del ctx, args
    raise NotImplementedYetError("image build: not implemented yet")

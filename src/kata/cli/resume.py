"""`kata-runtime resume ID`: thaw a paused container."""

from __future__ import annotations

import argparse

from kata.cli.context import CliContext

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("container_id", metavar="ID", help="the container id")


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    ctx.runtime.resume(args.container_id)
    return 0

"""`kata-runtime delete [--force] ID`: remove the container, its VM and its daemon."""

from __future__ import annotations

import argparse

from kata.cli.context import CliContext

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--force", action="store_true",
                        help="kill a running container first; no error when it does not exist")
    parser.add_argument("container_id", metavar="ID", help="the container id")


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    ctx.runtime.delete(args.container_id, force=args.force)
    return 0

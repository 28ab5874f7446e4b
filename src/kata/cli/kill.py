"""`kata-runtime kill [--all] ID [SIGNAL]`: signal the container's process (name or number, default TERM)."""

from __future__ import annotations

import argparse

from kata.cli.context import CliContext

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-a", "--all", action="store_true", help="signal every process of the container")
    parser.add_argument("container_id", metavar="ID", help="the container id")
    parser.add_argument("signal", nargs="?", default="SIGTERM", help="name or number (default: %(default)s)")


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    from kata.oci_cli.signals import parse_signal

    ctx.runtime.kill(args.container_id, parse_signal(args.signal), all_processes=args.all)
    return 0

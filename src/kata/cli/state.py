"""`kata-runtime state ID`: the container's OCI state as JSON (runc's shape)."""

from __future__ import annotations

import argparse

from kata.cli.context import CliContext

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("container_id", metavar="ID", help="the container id")


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    from kata.oci_cli.statejson import dumps

    print(dumps(ctx.runtime.state(args.container_id).to_json()))
    return 0

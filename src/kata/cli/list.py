"""`kata-runtime list [-q] [--format table|json]`: the containers under --root."""

from __future__ import annotations

import argparse

from kata.cli.context import CliContext

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--format", choices=("table", "json"), default="table")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the ids")


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    import json

    from kata.oci_cli.statejson import list_table

    states = ctx.runtime.list_states()
    if args.quiet:
        for state in states:
            print(state["id"])
    elif args.format == "json":
        print(json.dumps(states))
    else:
        print(list_table(states))
    return 0

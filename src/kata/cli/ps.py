"""`kata-runtime ps [--format table|json] ID [PS_ARGS...]`: the container's host processes (the VMM: its
processes live in the guest), as runc prints them."""

from __future__ import annotations

import argparse

from kata.cli.context import CliContext

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--format", choices=("table", "json"), default="table")
    parser.add_argument("container_id", metavar="ID", help="the container id")
    parser.add_argument("ps_args", nargs=argparse.REMAINDER, help="arguments for ps (default: -ef)")


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    import json
    import subprocess

    from kata.oci_cli.errors import OciCliError
    from kata.oci_cli.statejson import ps_table

    pids = ctx.runtime.pids(args.container_id)
    if args.format == "json":
        print(json.dumps(pids))
        return 0
    try:
        output = subprocess.run(["ps", *(args.ps_args or ["-ef"])], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise OciCliError(f"ps: {exc}") from exc
    lines = output.splitlines()
    print(ps_table(lines[0] if lines else "", lines[1:], pids))
    return 0

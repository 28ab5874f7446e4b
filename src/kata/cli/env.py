"""`kata-runtime env [--json]`: effective configuration, paths, versions and host facts."""

from __future__ import annotations

import argparse
import json

from kata.cli.context import CliContext

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of TOML")


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    import tomli_w

    from kata.host.env import collect_env

    report = collect_env(ctx.loaded, root=ctx.root)
    print(json.dumps(report, indent=2) if args.json else tomli_w.dumps(report), end="\n" if args.json else "")
    return 0

"""kata-runtime timeline: print a sandbox's startup phases from its timeline.json."""

from __future__ import annotations

import argparse
import json

from kata.cli.context import CliContext

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``timeline [--json] <sandbox-id>``."""
    parser.add_argument("--json", action="store_true", help="print timeline.json as it is stored")
    parser.add_argument("sandbox_id", metavar="ID", help="the sandbox id")


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    """Print the table (or JSON).

    Raises:
        SandboxNotFoundError: no such sandbox under --root.
        SandboxError: its timeline.json is malformed.
    """
    from pathlib import Path

    from kata.sandbox.paths import SandboxPaths, check_id
    from kata.sandbox.timeline import format_timeline, load_timeline

    paths = SandboxPaths(Path(ctx.root), check_id("sandbox", args.sandbox_id))
    timeline = load_timeline(paths.timeline_file)
    print(json.dumps(timeline.to_json(), indent=2) if args.json else format_timeline(timeline))
    return 0

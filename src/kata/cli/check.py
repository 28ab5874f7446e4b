"""`kata-runtime check [--verbose] [--strict]`: can this host run pykata sandboxes?"""

from __future__ import annotations

import argparse

from kata.cli.context import CliContext

__all__ = ["add_arguments", "run"]

MARKS = {"ok": "[ok]  ", "warn": "[warn]", "fail": "[FAIL]"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="show every check, not only problems")
    parser.add_argument("--strict", action="store_true", help="treat warnings as failures")


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    """Print the checks; exit 0 when sandboxes can run (via KVM or TCG), 1 otherwise."""
    from kata.host.checks import Status, is_capable, run_checks

    results = run_checks(ctx.loaded.config)
    for result in results:
        if args.verbose or result.status is not Status.OK or result.name == "accelerator":
            print(f"{MARKS[result.status.value]} {result.name}: {result.detail}")
    if is_capable(results, strict=args.strict):
        print("System is capable of running pykata")
        return 0
    print("System is NOT capable of running pykata" + (" (strict: warnings count)" if args.strict else ""))
    return 1

"""`kata-runtime features`: what this runtime supports, as runtime-spec 1.1's features JSON."""

from __future__ import annotations

import argparse

from kata.cli.context import CliContext

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    import json

    from kata.oci_cli.report import features

    del ctx, args
    print(json.dumps(features(), indent="    "))
    return 0

"""`kata-runtime events [--stats] [--interval 5s] ID`: the container's resource usage as JSON lines
(`--stats`: once), until it stops."""

from __future__ import annotations

import argparse

from kata.cli.context import CliContext

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", default="5s", help="time between stats records (default: %(default)s)")
    parser.add_argument("--stats", action="store_true", help="print the stats once and exit")
    parser.add_argument("container_id", metavar="ID", help="the container id")


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    import json
    import sys
    import time

    from kata.errors import KataError
    from kata.oci_cli.report import stats_event
    from kata.oci_cli.units import parse_duration
    from kata.protocols.pb import cgroups_v1_metrics_pb2

    interval = parse_duration(args.interval)
    while True:
        try:
            stats = ctx.runtime.stats(args.container_id)
        except KataError:
            if args.stats:
                raise
            return 0  # the container stopped (or went away): the stream ends
        metrics = cgroups_v1_metrics_pb2.Metrics.FromString(stats.value)
        print(json.dumps(stats_event(args.container_id, metrics)), flush=True)
        if args.stats:
            return 0
        time.sleep(interval)
        sys.stdout.flush()

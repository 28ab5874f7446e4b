"""Concurrent start: N sandboxes started at once (`ctr run --rm ... /bin/true` in parallel) vs one alone.

Usage: flock /tmp/pykata-vm.lock .venv/bin/python bench/concurrency.py [--count 10] [--runs 3] [--no-write]

Each round runs one ``ctr run --rm --runtime io.containerd.kata.v2 IMG ID /bin/true`` alone, then
``--count`` of them launched together (one ``ctr`` process each, so one shim daemon and one VM each),
and takes the wall time until the last one has exited and been removed. The ratio is the batch's
wall time over the single run's (p50 of each); ``--count`` x that would be fully serial. A 2-core host
runs CPU-bound TCG guests, so the floor is about count / cores. The sandboxes get ``[agent.kata]
dial_timeout = --dial-timeout`` (300 s): with the default 30 s, 10 guests booting at once on 2 cores
under TCG all time out before their agents answer.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    Summary,
    add_common_args,
    machine_facts,
    print_facts,
    print_table,
    progress,
    retry,
    summarize,
    write_results,
)
from engines import Ctr, bench_config, containerd, run_quiet


def batch(ctr: Ctr, config: Path, prefix: str, count: int) -> tuple[float, list[float]]:
    """(wall seconds until all ``count`` exited, each one's seconds); raises when any failed."""
    started = time.monotonic()
    procs = [subprocess.Popen(ctr.run_argv(f"{prefix}{index}", "/bin/true", config_path=str(config)),
                              stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for index in range(count)]
    each: list[float] = [0.0] * count
    pending = dict(enumerate(procs))
    while pending:
        for index, proc in list(pending.items()):
            if proc.poll() is not None:
                each[index] = time.monotonic() - started
                del pending[index]
        time.sleep(0.01)
    wall = time.monotonic() - started
    failed = [(proc.returncode, proc.stderr.read() if proc.stderr else "") for proc in procs if proc.returncode]
    for proc in procs:
        if proc.stderr:
            proc.stderr.close()
    if failed:
        for index in range(count):
            ctr.remove(f"{prefix}{index}")
        raise RuntimeError(f"{len(failed)} of {count} failed, first: {failed[0]}")
    return wall, each


def _plot(single: Summary, wall: Summary, each: list[float], count: int) -> Callable[[Any], None]:
    def plot(figure: Any) -> None:
        left, right = figure.subplots(1, 2)
        left.bar(["one alone", f"{count} at once"], [single.p50, wall.p50],
                 yerr=[[0, 0], [single.p90 - single.p50, wall.p90 - wall.p50]], capsize=4, color=["C0", "C1"])
        left.axhline(single.p50 * count, color="grey", linestyle=":", label=f"{count} x one (serial)")
        left.set_ylabel("wall seconds (p50, whisker p90)")
        left.legend()
        left.set_title("start + /bin/true + remove")
        right.hist(each, bins=20, color="C1")
        right.set_xlabel("seconds from launch to each ctr's exit")
        right.set_title(f"{count} at once: each one")
    return plot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, runs=3)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--dial-timeout", type=int, default=300,
                        help="[agent.kata] dial_timeout: the default 30 s is too short for 10 TCG boots on 2 cores")
    args = parser.parse_args(argv)
    facts = machine_facts()
    samples: dict[str, list[float]] = {"one": [], "all": []}
    each: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as tmp, containerd() as ctr:
        config = bench_config(Path(tmp), agent={"dial_timeout": args.dial_timeout})
        ids = iter(range(1_000_000))
        for run in range(args.runs):
            samples["one"].append(retry(lambda: _single(ctr, config, f"one-{next(ids)}"), what="one sandbox"))
            wall, times = retry(lambda: batch(ctr, config, f"many-{next(ids)}-", args.count), what="batch")
            samples["all"].append(wall)
            each += times
            progress(f"round {run + 1}/{args.runs}: one {samples['one'][-1]:.1f} s, {args.count} at once {wall:.1f} s")
    stats = summarize(samples)
    single, wall_stats = stats["one"], stats["all"]
    print_facts(facts)
    print_table(f"{args.count} sandboxes started at once vs one alone ({args.runs} rounds, p50 / p90 (min-max))",
                ["case", "wall time", f"per sandbox (wall / {args.count})", "wall / one"],
                [("one sandbox", single.cell(), single.cell(), "1.00x"),
                 (f"{args.count} at once", wall_stats.cell(), f"{wall_stats.p50 / args.count:.2f} s",
                  f"{wall_stats.p50 / single.p50:.2f}x")])
    write_results(args, "concurrency", {
        "machine": facts, "count": args.count, "dial_timeout": args.dial_timeout, "runs": args.runs, "one": single,
        "all": wall_stats,
        "ratio": wall_stats.p50 / single.p50, "samples": samples, "each": each,
    }, _plot(single, wall_stats, each, args.count))
    return 0


def _single(ctr: Ctr, config: Path, container_id: str) -> float:
    started = time.monotonic()
    run_quiet(ctr.run_argv(container_id, "/bin/true", config_path=str(config)))
    return time.monotonic() - started


if __name__ == "__main__":
    sys.exit(main())

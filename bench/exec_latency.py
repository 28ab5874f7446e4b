"""Exec latency into a running container: `true` through the library, ctr (our shim), the OCI CLI, vs runc.

Usage: flock /tmp/pykata-vm.lock .venv/bin/python bench/exec_latency.py [--runs 20] [--no-write]

One container per way, started beforehand and running ``sleep``: a sandbox of the library in this
process (``container.exec(["true"]).wait()``), a ``ctr run -d`` task with our shim (``ctr task exec``),
a ``kata-runtime run -d`` container (``kata-runtime exec``, only when the OCI CLI is there), and for
context runc (``runc exec``) and a ``ctr run -d`` task with containerd's runc shim. Execs are
interleaved (one of each per round); host wall clock from the call to the exit status, p50 / p90.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common import (
    Summary,
    add_common_args,
    machine_facts,
    print_facts,
    print_table,
    progress,
    summarize,
    write_results,
)
from engines import KATA_RUNTIME, Ctr, containerd, oci_cli_available, run_quiet, runc_available
from tests.agent.sandbox_support import make_bundle

from kata.config import load_config
from kata.sandbox import Sandbox

SLEEP = ("sleep", "1000000")


def _timed(argv: list[str]) -> float:
    started = time.monotonic()
    run_quiet(argv, timeout=120)
    return time.monotonic() - started


@contextlib.contextmanager
def library(work: Path) -> Iterator[Callable[[int], float]]:
    sb = Sandbox.create(load_config(), root=work / "lib", sandbox_id="bench-exec")
    try:
        container = sb.create_container(make_bundle(work / "lib-bundle", *SLEEP), container_id="c")
        container.start()

        def run(index: int) -> float:
            started = time.monotonic()
            status = container.exec(["true"], exec_id=f"e{index}").wait(timeout=120)
            if status != 0:
                raise RuntimeError(f"exec exited {status}")
            return time.monotonic() - started

        yield run
    finally:
        sb.delete()


@contextlib.contextmanager
def ctr_task(ctr: Ctr, container_id: str, runtime: str) -> Iterator[Callable[[int], float]]:
    run_quiet(ctr.run_argv(container_id, *SLEEP, runtime=runtime, detach=True))
    try:
        yield lambda index: _timed(ctr.argv("task", "exec", "--exec-id", f"e{index}", container_id, "true"))
    finally:
        ctr.remove(container_id)


@contextlib.contextmanager
def cli_container(command: list[str], work: Path, name: str) -> Iterator[Callable[[int], float]]:
    """A runc-style CLI (``command`` = binary + global options): ``run -d``, ``exec``, ``delete --force``."""
    bundle = make_bundle(work / f"{name}-bundle", *SLEEP)
    log = work / f"{name}.log"
    # a file, not a pipe: the detached container (or its process proxy) keeps the descriptors open
    with log.open("wb") as out:
        done = subprocess.run([*command, "run", "-d", "--bundle", str(bundle), name], stdin=subprocess.DEVNULL,
                              stdout=out, stderr=out, check=False, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} run -d exited {done.returncode}: {log.read_text()[-500:]}")
    try:
        yield lambda index: _timed([*command, "exec", name, "true"])
    finally:
        subprocess.run([*command, "delete", "--force", name], capture_output=True, check=False, timeout=120)


def _plot(stats: dict[str, Summary]) -> Callable[[Any], None]:
    def plot(figure: Any) -> None:
        axes = figure.subplots()
        names = list(stats)
        axes.barh(names, [stats[n].p50 * 1000 for n in names],
                  xerr=[[0] * len(names), [(stats[n].p90 - stats[n].p50) * 1000 for n in names]],
                  color=["#2b6cb0" if "runc" not in n else "#dd8452" for n in names], capsize=3)
        axes.invert_yaxis()
        axes.set_xlabel("milliseconds (bar: p50, whisker: p90)")
        axes.set_title("exec `true` into a running container")
    return plot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, runs=20)
    args = parser.parse_args(argv)
    facts = machine_facts()
    notes = []
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-exec-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        ways: dict[str, Callable[[int], float]] = {}
        ways["pykata library"] = stack.enter_context(library(work))
        ctr = stack.enter_context(containerd())
        ways["ctr task exec (kata shim)"] = stack.enter_context(
            ctr_task(ctr, "bench-exec-kata", "io.containerd.kata.v2"))
        missing = oci_cli_available()
        if missing:
            notes.append(f"OCI CLI skipped: {missing}")
        else:
            command = [str(KATA_RUNTIME), "--root", str(work / "cli")]
            ways["kata-runtime exec"] = stack.enter_context(cli_container(command, work, "bench-exec-cli"))
        if runc_available():
            notes.append(f"runc skipped: {runc_available()}")
        else:
            ways["runc exec"] = stack.enter_context(cli_container(["runc", "--root", str(work / "runc")], work,
                                                                  "bench-exec-runc"))
            ways["ctr task exec (runc shim)"] = stack.enter_context(
                ctr_task(ctr, "bench-exec-runc-ctr", "io.containerd.runc.v2"))
        progress(f"containers running: {', '.join(ways)}")
        for index in range(args.runs):
            for name, way in ways.items():
                samples.setdefault(name, []).append(way(index))
        progress("execs done")
    stats = summarize(samples)
    print_facts(facts)
    for note in notes:
        print(note)
    runc = stats.get("runc exec")
    print_table(f"exec `true` into a running container, {args.runs} interleaved rounds, p50 / p90 (min-max)",
                ["way", "latency", "p50 / runc exec"],
                [(name, s.cell(1000, "ms", 0), f"{s.p50 / runc.p50:.1f}x" if runc else "-")
                 for name, s in stats.items()])
    write_results(args, "exec_latency", {"machine": facts, "notes": notes, "runs": args.runs, "latency": stats,
                                         "samples": samples}, _plot(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())

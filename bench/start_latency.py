"""Start latency of `/bin/true` in a VM (library, OCI CLI, ctr) against a bare QEMU boot+poweroff, and runc.

Usage: flock /tmp/pykata-vm.lock .venv/bin/python bench/start_latency.py [--runs 10] [--no-write]

Every round runs each variant once, in turn (interleaved, so a noisy host hits all alike); cells are
p50 / p90 (min-max) of host wall clock over ``--runs`` rounds:

- bare boot: `qemu-system-x86_64` (q35, TCG, PVH vmlinux, as kata.image.bootcheck) of the guest kernel with
  a busybox initrd whose /init powers off (the floor boot_ratio.py uses), and with the pykata initrd itself
  and ``rdinit=busybox poweroff -f`` (the same kernel and initrd, no agent): launch to QEMU's exit;
- library: ``Sandbox.create`` (default configuration) + create_container + start + wait of a busybox bundle
  running /bin/true: "to exit" ends when wait() returns, "total" after ``delete()``; its timeline phases
  give the stacked bar;
- OCI CLI: ``kata-runtime --root R run --bundle B ID`` (only when ``kata-runtime run --help`` works);
- ctr: ``ctr run --rm --runtime io.containerd.kata.v2 IMG ID /bin/true`` (containerd 1.6, our shim);
- runc: ``runc --root R run --bundle B ID`` and ``ctr run --rm`` with containerd's runc shim, for context.

Ratios are p50 / p50 of the bare boot with the pykata initrd (the issue's "same kernel and initrd").
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    Summary,
    machine_facts,
    print_facts,
    print_table,
    progress,
    retry,
    summarize,
    write_results,
)
from common import add_common_args as add_args
from engines import KATA_RUNTIME, Ctr, containerd, oci_cli_available, run_quiet, runc_available
from tests.agent.sandbox_support import make_bundle

from kata.config import load_config
from kata.image.bootcheck import boot_bare, write_bare_initrd
from kata.sandbox import Sandbox
from kata.sandbox.timeline import PHASES

BARE_BUSYBOX = "bare boot, busybox initrd"
BARE_SAME = "bare boot, pykata initrd (reference)"
LIBRARY = "pykata library"
LIBRARY_TOTAL = "pykata library incl. delete"
OCI_CLI = "kata-runtime run"
CTR_KATA = "ctr run --rm (kata shim)"
RUNC = "runc run"
CTR_RUNC = "ctr run --rm (runc shim)"
REFERENCE = BARE_SAME
# The initrd's busybox as init, powering off at once: the kernel passes the words after "--" to init.
POWEROFF_INIT = "rdinit=/bin/busybox -- poweroff -f"  # /bin/busybox: in the initrd and in the boot initrd
EXITED = "container exited"
DELETED = "sandbox deleted"
STACK = (*PHASES, EXITED, DELETED)


def _timed(step: Callable[[], object]) -> float:
    started = time.monotonic()
    step()
    return time.monotonic() - started


def library_run(bundle: Path, root: Path, sandbox_id: str) -> tuple[float, float, dict[str, float]]:
    """(to exit, total, step seconds per phase) of one sandbox running the bundle's /bin/true."""
    started = time.monotonic()
    sb = Sandbox.create(load_config(), root=root, sandbox_id=sandbox_id)
    try:
        container = sb.create_container(bundle, container_id="c")
        container.start()
        status = container.wait(timeout=120)
        exited = time.monotonic()
        timeline = sb.timeline()
    finally:
        sb.delete()
    deleted = time.monotonic()
    if status != 0:
        raise RuntimeError(f"/bin/true exited {status}")
    steps: dict[str, float] = {}
    previous = timeline.origin
    for phase in timeline.phases:
        steps[phase.name] = phase.monotonic - previous
        previous = phase.monotonic
    steps[EXITED] = exited - previous
    steps[DELETED] = deleted - exited
    return exited - started, deleted - started, steps


class Variants:
    """The variants of one bench run and their samples."""

    def __init__(self, work: Path, ctr: Ctr | None, oci_cli: bool, runc: bool) -> None:
        self.work, self.ctr = work, ctr
        self.samples: dict[str, list[float]] = {}
        self.ids = itertools.count()  # a fresh id per attempt: a failed one may leave its id behind
        self.steps: dict[str, list[float]] = {name: [] for name in STACK}
        self.bundle = make_bundle(work / "bundle", "/bin/true")
        self.busybox_initrd = work / "bare.cpio"
        write_bare_initrd(self.busybox_initrd)
        config = load_config().config.hypervisor
        self.kernel, self.initrd = Path(config.kernel), Path(config.initrd)
        self.runs: list[tuple[str, Callable[[int], None]]] = [
            (BARE_BUSYBOX, functools.partial(self._bare, self.busybox_initrd, "")),
            (BARE_SAME, functools.partial(self._bare, self.initrd, POWEROFF_INIT)),
            (LIBRARY, self._library),
        ]
        if oci_cli:
            self.runs.append((OCI_CLI, self._oci_cli))
        if ctr is not None:
            self.runs.append((CTR_KATA, self._ctr_kata))
        if runc:
            self.runs.append((RUNC, self._runc))
            if ctr is not None:
                self.runs.append((CTR_RUNC, self._ctr_runc))

    def _add(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, []).append(seconds)

    def _bare(self, initrd: Path, cmdline: str, run: int) -> None:
        self._add(BARE_SAME if cmdline else BARE_BUSYBOX,
                  boot_bare(self.kernel, initrd, self.work, extra_cmdline=cmdline))

    def _library(self, run: int) -> None:
        to_exit, total, steps = library_run(self.bundle, self.work / "lib", f"bench-start-{next(self.ids)}")
        self._add(LIBRARY, to_exit)
        self._add(LIBRARY_TOTAL, total)
        for name, seconds in steps.items():
            self.steps[name].append(seconds)

    def _oci_cli(self, run: int) -> None:
        argv = [str(KATA_RUNTIME), "--root", str(self.work / "cli"), "run", "--bundle", str(self.bundle),
                f"bench-cli-{next(self.ids)}"]
        self._add(OCI_CLI, _timed(lambda: run_quiet(argv)))

    def _ctr_kata(self, run: int) -> None:
        assert self.ctr is not None
        argv = self.ctr.run_argv(f"bench-kata-{next(self.ids)}", "/bin/true")
        self._add(CTR_KATA, _timed(lambda: run_quiet(argv)))

    def _runc(self, run: int) -> None:
        argv = ["runc", "--root", str(self.work / "runc"), "run", "--bundle", str(self.bundle),
                f"bench-runc-{next(self.ids)}"]
        self._add(RUNC, _timed(lambda: run_quiet(argv)))

    def _ctr_runc(self, run: int) -> None:
        assert self.ctr is not None
        argv = self.ctr.run_argv(f"bench-runc-{next(self.ids)}", "/bin/true", runtime="io.containerd.runc.v2")
        self._add(CTR_RUNC, _timed(lambda: run_quiet(argv)))

    def round(self, run: int) -> None:
        for name, step in self.runs:
            before = len(self.samples.get(name, ()))
            retry(functools.partial(self._one, name, step, run, before), what=name)

    def _one(self, name: str, step: Callable[[int], None], run: int, before: int) -> None:
        # a failed attempt may have appended to another list (library: total); trim back before retrying
        del self.samples.setdefault(name, [])[before:]
        step(run)


def _plot(summaries: dict[str, Summary], steps: dict[str, Summary]) -> Callable[[Any], None]:
    def plot(figure: Any) -> None:
        left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
        names = list(summaries)
        p50 = [summaries[n].p50 for n in names]
        p90 = [summaries[n].p90 - summaries[n].p50 for n in names]
        colours = ["#999999" if n.startswith("bare") else "#2b6cb0" if "kata" in n or "pykata" in n else "#dd8452"
                   for n in names]
        left.barh(names, p50, xerr=[[0] * len(names), p90], color=colours, capsize=3)
        left.invert_yaxis()
        left.set_xlabel("seconds (bar: p50, whisker: p90)")
        left.set_title("/bin/true start latency")
        bottom = 0.0
        for index, name in enumerate(n for n in STACK if n in steps):
            value = steps[name].p50
            right.bar(["library"], [value], bottom=bottom, label=name, color=f"C{index}")
            bottom += value
        right.axhline(summaries[REFERENCE].p50, color="black", linestyle="--", label="bare boot (reference)")
        right.set_ylabel("seconds (p50 of each step)")
        right.set_title("library timeline")
        right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return plot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(parser, runs=10)
    parser.add_argument("--no-ctr", action="store_true", help="skip containerd (ctr) variants")
    args = parser.parse_args(argv)
    facts = machine_facts()
    notes = []
    cli_missing = oci_cli_available()
    if cli_missing:
        notes.append(f"OCI CLI skipped: {cli_missing}")
    runc_missing = runc_available()
    if runc_missing:
        notes.append(f"runc skipped: {runc_missing}")
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        ctr_context = containerd() if not args.no_ctr else contextlib.nullcontext()
        with ctr_context as ctr:
            variants = Variants(Path(tmp), ctr, oci_cli=not cli_missing, runc=not runc_missing)
            for run in range(args.runs):
                variants.round(run)
                progress(f"round {run + 1}/{args.runs} done")
    summaries = summarize(variants.samples)
    steps = summarize(variants.steps)
    reference = summaries[REFERENCE].p50
    print_facts(facts)
    for note in notes:
        print(note)
    print_table(f"/bin/true start latency, {args.runs} interleaved rounds, host wall clock, p50 / p90 (min-max)",
                ["variant", "latency", "p50 / reference"],
                [(name, s.cell(), f"{s.p50 / reference:.2f}x") for name, s in summaries.items()])
    print_table("library startup timeline (step durations, p50 / p90 in ms)",
                ["phase", "step"], [(name, s.cell(1000, "ms", 0)) for name, s in steps.items()])
    write_results(args, "start_latency", {
        "machine": facts, "notes": notes, "reference": REFERENCE, "runs": args.runs,
        "latency": summaries, "samples": variants.samples, "library_steps": steps,
        "ratios": {name: s.p50 / reference for name, s in summaries.items()},
    }, _plot(summaries, steps), size=(11, 4.5))
    return 0


if __name__ == "__main__":
    sys.exit(main())

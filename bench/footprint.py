"""Host memory per idle sandbox (PSS of qemu + virtiofsd + shim daemon) for N sandboxes, and guest MemAvailable.

Usage: flock /tmp/pykata-vm.lock .venv/bin/python bench/footprint.py [--counts 1,5,10] [--memory 128]
       [--set KEY=VALUE ...] [--fork-server] [--settle 10] [--name footprint] [--no-write]

For each N, containerd (1.6, own dirs) starts N containers of the busybox image with ``ctr run -d
--runtime io.containerd.kata.v2 --runtime-config-path CFG`` running ``sleep``, one after the other;
CFG is the built-in configuration with ``default_memory = --memory`` and every ``--set`` key of
``[hypervisor.qemu]`` (e.g. ``--set tcg_tb_size=16``); ``default_maxmemory`` is set to
``--memory`` too (a 128 MiB guest with the default hotplug range panics at boot); ``--memory 0``
keeps the defaults. After ``--settle`` seconds the PSS
(/proc/PID/smaps_rollup) of every process of each sandbox is summed: the shim daemon (one per
sandbox, it owns the VM) and its descendants, QEMU and virtiofsd. PSS splits shared pages between the
processes mapping them, so the sum over all sandboxes is what they cost together and its N-th part is
the cost of one; the shared kernel image and QEMU's libraries make that part smaller as N grows.
Guest MemAvailable/MemTotal come from ``ctr task exec ... cat /proc/meminfo`` in each sandbox.
The host's MemAvailable drop is printed as a cross-check (other processes on the host move it).
``--fork-server`` runs ``kata-runtime fork-server`` and sets ``[runtime] shim_fork_server = true``: the
daemons are forked from it (found as the parents of their QEMUs: their command line is the server's),
and the server's own PSS, paid once, is added to the shim column divided among the N sandboxes.
``--runs`` repeats the whole series and keeps the median per N.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    add_common_args,
    cmdline,
    comm,
    descendants,
    machine_facts,
    pids_matching,
    ppid_of,
    print_facts,
    print_table,
    progress,
    pss_kib,
    top_mappings,
    write_results,
)
from engines import Ctr, bench_config, containerd, fork_server, run_quiet

COMPONENTS = ("qemu", "virtiofsd", "shim", "other")
TARGET_MIB = 120
# What the guest's memory holds: the unpacked initrd is Shmem (tmpfs), the agent is AnonPages.
GUEST_KEYS = ("MemTotal", "MemFree", "MemAvailable", "Shmem", "Cached", "AnonPages", "Slab", "KernelStack",
              "PageTables", "Percpu")


def component(pid: int) -> str:
    name = comm(pid)
    if name.startswith("qemu"):
        return "qemu"
    if "virtiofsd" in name:
        return "virtiofsd"
    if name == "kata-shim" or any("containerd-shim-kata-v2" in word for word in cmdline(pid)[:2]):
        return "shim"
    return "other"


def shim_daemons(prefix: str) -> dict[str, int]:
    """Sandbox id -> pid of its shim daemon (the shim process without a ``start``/``delete`` verb)."""
    found: dict[str, int] = {}

    def is_daemon(pid: int) -> bool:
        argv = cmdline(pid)
        return (len(argv) > 1 and any("containerd-shim-kata-v2" in word for word in argv[:2])
                and "start" not in argv and "delete" not in argv)

    for pid in pids_matching(is_daemon):
        argv = cmdline(pid)
        if "-id" in argv and argv[argv.index("-id") + 1].startswith(prefix):
            found[argv[argv.index("-id") + 1]] = pid
    # A daemon forked by the fork server has the server's command line: it is its QEMU's parent.
    for pid in pids_matching(lambda pid: comm(pid).startswith("qemu")):
        argv = cmdline(pid)
        name = argv[argv.index("-name") + 1] if "-name" in argv else ""
        sandbox = name.removeprefix("sandbox-")
        parent = ppid_of(pid) if name.startswith("sandbox-") and sandbox.startswith(prefix) else None
        if parent is not None and sandbox not in found:
            found[sandbox] = parent
    return found


def host_mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def guest_meminfo(ctr: Ctr, container_id: str) -> dict[str, int]:
    """GUEST_KEYS of /proc/meminfo (KiB) seen inside the sandbox."""
    done = subprocess.run(ctr.argv("task", "exec", "--exec-id", "meminfo", container_id, "cat", "/proc/meminfo"),
                          capture_output=True, text=True, timeout=120, check=True)
    values = {}
    for line in done.stdout.splitlines():
        key, _, rest = line.partition(":")
        if key in GUEST_KEYS:
            values[key] = int(rest.split()[0])
    return values


@dataclass(frozen=True)
class Sample:
    """One series point: N sandboxes, their PSS per component (KiB, summed), guest meminfo."""

    count: int
    pss: dict[str, int]
    per_sandbox: list[int]
    guest: list[dict[str, int]]
    host_drop_kib: int
    qemu_mappings: list[tuple[int, int, str]]

    def per_sandbox_mib(self, part: str | None = None) -> float:
        total = self.pss[part] if part else sum(self.pss.values())
        return total / self.count / 1024


def measure(ctr: Ctr, config: Path, count: int, settle: float, prefix: str, *, server: int = 0) -> Sample:
    """Start ``count`` idle sandboxes, measure, remove them (``server``: the fork server's pid, or 0)."""
    before = host_mem_available_kib()
    ids = [f"{prefix}{index}" for index in range(count)]
    try:
        for container_id in ids:
            run_quiet(ctr.run_argv(container_id, "sleep", "1000000", config_path=str(config), detach=True))
            progress(f"{container_id} running")
        time.sleep(settle)
        daemons = shim_daemons(prefix)
        if sorted(daemons) != sorted(ids):
            raise RuntimeError(f"shim daemons found for {sorted(daemons)}, expected {ids}")
        pss = dict.fromkeys(COMPONENTS, 0)
        per_sandbox = []
        mappings: list[tuple[int, int, str]] = []
        for pid in daemons.values():
            total = 0
            for process in descendants(pid):
                kib = pss_kib(process)
                pss[component(process)] += kib
                total += kib
                if not mappings and component(process) == "qemu":
                    mappings = top_mappings(process)
            per_sandbox.append(total)
        if server:
            shared = pss_kib(server)
            pss["shim"] += shared
            per_sandbox = [total + shared // count for total in per_sandbox]
        drop = before - host_mem_available_kib()
        guest = [guest_meminfo(ctr, container_id) for container_id in ids]
        return Sample(count, pss, per_sandbox, guest, drop, mappings)
    finally:
        for container_id in ids:
            ctr.remove(container_id)
        _wait_gone(prefix)


def _wait_gone(prefix: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while shim_daemons(prefix) and time.monotonic() < deadline:
        time.sleep(0.2)


def _median_sample(samples: list[Sample]) -> Sample:
    """The sample whose per-sandbox total is the median (so its parts add up)."""
    ordered = sorted(samples, key=lambda s: s.per_sandbox_mib())
    return ordered[(len(ordered) - 1) // 2]


def _rows(samples: Iterable[Sample]) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for s in samples:
        avail = [g.get("MemAvailable", 0) / 1024 for g in s.guest]
        total = [g.get("MemTotal", 0) / 1024 for g in s.guest]
        rows.append((s.count, f"**{s.per_sandbox_mib():.1f}**",
                     *(f"{s.per_sandbox_mib(part):.1f}" for part in COMPONENTS if part != "other"),
                     f"{min(s.per_sandbox) / 1024:.0f}-{max(s.per_sandbox) / 1024:.0f}",
                     f"{s.host_drop_kib / s.count / 1024:.0f}",
                     f"{statistics.median(avail):.0f} / {statistics.median(total):.0f}"))
    return rows


def _plot(samples: list[Sample], label: str) -> Callable[[Any], None]:
    def plot(figure: Any) -> None:
        axes = figure.subplots()
        names = [f"N={s.count}" for s in samples]
        bottom = [0.0] * len(samples)
        for index, part in enumerate(COMPONENTS):
            values = [s.per_sandbox_mib(part) for s in samples]
            if any(values):
                axes.bar(names, values, bottom=bottom, label=part, color=f"C{index}")
                bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        axes.axhline(TARGET_MIB, color="red", linestyle="--", label=f"target {TARGET_MIB} MiB")
        axes.set_ylabel("host PSS per idle sandbox (MiB)")
        axes.set_title(f"footprint per sandbox ({label})")
        axes.legend()
    return plot


def _toml_value(text: str) -> object:
    """``--set`` values: integers and true/false keep their TOML type, anything else is a string."""
    if text.lstrip("-").isdigit():
        return int(text)
    return {"true": True, "false": False}.get(text, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, runs=1)
    parser.add_argument("--counts", default="1,5,10", help="sandbox counts, comma-separated")
    parser.add_argument("--memory", type=int, default=128,
                        help="default_memory (and default_maxmemory) of each sandbox in MiB; 0: the defaults")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another [hypervisor.qemu] key for the sandboxes (integers, true/false keep their type)")
    parser.add_argument("--fork-server", action="store_true",
                        help="fork the shim daemons from `kata-runtime fork-server` (shim_fork_server = true)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds idle before measuring")
    parser.add_argument("--name", default="footprint", help="result file name (docs/bench/NAME.json/.png)")
    args = parser.parse_args(argv)
    # Without a hotplug range: a 128 MiB guest whose default_maxmemory is the host's memory (the default)
    # panics while unpacking the initrd ("System is deadlocked on memory"; also with 4 GiB).
    keys: dict[str, object] = {"default_memory": args.memory, "default_maxmemory": args.memory} if args.memory else {}
    for item in args.set:
        key, _, value = item.partition("=")
        keys[key] = _toml_value(value)
    label = ", ".join(f"{k}={v}" for k, v in keys.items()) or "default configuration"
    if args.fork_server:
        label += ", forked shim daemons"
    facts = machine_facts()
    counts = [int(c) for c in args.counts.split(",")]
    series: dict[int, list[Sample]] = {count: [] for count in counts}
    runtime = {"shim_fork_server": True} if args.fork_server else {}
    with (tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp, containerd() as ctr,
          fork_server(args.fork_server) as server):
        config = bench_config(Path(tmp) / "config", keys, runtime=runtime)
        for run in range(args.runs):
            for count in counts:
                series[count].append(measure(ctr, config, count, args.settle, f"fp{run}n{count}-",
                                             server=server))
                progress(f"N={count} measured")
    samples = [_median_sample(series[count]) for count in counts]
    print_facts(facts)
    print_table(f"host PSS per idle sandbox (MiB), {label}, virtio-fs unless set; median of {args.runs} series",
                ["N", "total / N", "qemu", "virtiofsd", "shim daemon", "range of one sandbox",
                 "host MemAvailable drop / N", "guest MemAvailable / MemTotal"], _rows(samples))
    largest = samples[-1]
    print_table(f"guest /proc/meminfo of one sandbox at N={largest.count} (MiB)", GUEST_KEYS,
                [[f"{largest.guest[0].get(key, 0) / 1024:.1f}" for key in GUEST_KEYS]])
    print_table(f"largest mappings of one QEMU at N={largest.count} (KiB)", ["PSS", "RSS", "mapping"],
                largest.qemu_mappings)
    write_results(args, args.name, {
        "machine": facts, "config": keys, "fork_server": args.fork_server, "runs": args.runs, "target_mib": TARGET_MIB,
        "series": [{"count": s.count, "pss_kib": s.pss, "per_sandbox_kib": s.per_sandbox, "guest": s.guest,
                    "host_mem_available_drop_kib": s.host_drop_kib,
                    "per_sandbox_mib": s.per_sandbox_mib(), "qemu_mappings": s.qemu_mappings} for s in samples],
        "all_runs": {str(count): [s.per_sandbox_mib() for s in values] for count, values in series.items()},
    }, _plot(samples, label))
    return 0


if __name__ == "__main__":
    sys.exit(main())

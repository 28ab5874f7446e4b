"""Shared-fs throughput in a container: sequential write/read and small-file creation, virtio-fs vs 9p vs host.

Usage: flock /tmp/pykata-vm.lock .venv/bin/python bench/sharedfs.py [--runs 3] [--mib 64] [--files 500]
       [--no-write]

A busybox container (library sandbox, default configuration otherwise) has a host directory bind-mounted
at /data, which reaches the guest like its rootfs: through virtiofsd (``shared_fs = "virtio-fs"``,
the cloud kernel, cache=auto) or 9p (``virtio-9p``, the generic kernel flavour). One script per run
(an exec of ``sh -c``), timed in the guest with /proc/uptime (10 ms resolution):

- write: ``dd if=/dev/zero of=/data/wN bs=1M count=MIB conv=fsync``;
- read: ``cat /data/rN > /dev/null`` of a MIB MiB file the host wrote just before (in the host's page
  cache, never seen by the guest);
- create: ``seq FILES | xargs touch`` in a new directory of /data.

"host" runs the same script with the same busybox directly on the host's directory (same filesystem).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from common import (
    add_common_args,
    machine_facts,
    print_facts,
    print_table,
    progress,
    summarize,
    write_results,
)
from tests.agent.sandbox_support import make_bundle

from kata.config import load_config
from kata.config.schema import GUEST_DIR
from kata.oci.model import Mount
from kata.sandbox import PIPE, Sandbox

COMMANDS = {
    "write": "dd if=/dev/zero of={data}/w{run} bs=1M count={mib} conv=fsync 2>/dev/null",
    "read": "cat {data}/r{run} > /dev/null",
    "create": "mkdir {data}/small{run} && cd {data}/small{run} && seq {files} | xargs touch",
}


def guest_script(commands: dict[str, str]) -> str:
    """One exec in the guest: each command timed by /proc/uptime (busybox date has no %N)."""
    return "t() { read a b < /proc/uptime; echo $a; }\n" + "".join(
        f"s=$(t); ({command}); e=$(t); echo {name} $s $e\n" for name, command in commands.items())


OPERATIONS = ("write", "read", "create")
EXTRA_APPLETS = ("dd", "seq", "xargs", "cat", "mkdir", "touch")
FLAVOURS = {"virtio-fs": (Path(GUEST_DIR), "virtio-fs"), "9p": (Path(f"{GUEST_DIR}-generic"), "virtio-9p")}


def parse(output: str, mib: int, files: int, resolution: float) -> dict[str, float]:
    """MiB/s for write and read, files/s for create, from the script's ``NAME START END`` lines (a duration
    below the clock's ``resolution`` counts as half of it)."""
    rates = {}
    for line in output.splitlines():
        name, start, end = line.split()
        rates[name] = rate(name, max(float(end) - float(start), resolution / 2), mib, files)
    return rates


def rate(name: str, seconds: float, mib: int, files: int) -> float:
    return (files if name == "create" else mib) / seconds


def _host_file(path: Path, mib: int) -> None:
    with path.open("wb") as fh:
        block = os.urandom(1 << 20)
        for _ in range(mib):
            fh.write(block)


@contextmanager
def guest(flavour: str, work: Path, data: Path) -> Iterator[Callable[[str], str]]:
    """A sandbox with a container whose /data is ``data``; yields ``run(script) -> stdout``."""
    guest_dir, shared_fs = FLAVOURS[flavour]
    config = load_config().config
    config = replace(config, hypervisor=replace(config.hypervisor, kernel=str(guest_dir / "vmlinux"),
                                                initrd=str(guest_dir / "kata-initrd.img"), shared_fs=shared_fs))
    mount = Mount(destination="/data", type="bind", source=str(data), options=("rbind", "rw"))
    bundle = make_bundle(work / f"bundle-{flavour}", "sleep", "1000000", mounts=(mount,))
    for applet in EXTRA_APPLETS:
        link = bundle / "rootfs" / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    sb = Sandbox.create(config, root=work / "run", sandbox_id=f"bench-fs-{flavour.replace('-', '')}")
    try:
        container = sb.create_container(bundle, container_id="c")
        container.start()

        def run(script: str) -> str:
            process = container.exec(["sh", "-c", script], stdout=PIPE)
            assert process.stdout is not None
            output = process.stdout.read().decode()
            if process.wait(timeout=300) != 0:
                raise RuntimeError(f"script failed: {output}")
            return output

        yield run
    finally:
        sb.delete()


def _host_runner(work: Path) -> Callable[[str], str]:
    """Runs the commands one by one with the same busybox on the host, timed by this process (1 ms resolution
    matters here: the host is fast), and prints what the guest script prints."""
    applets = make_bundle(work / "host-busybox", "true") / "rootfs" / "bin"
    for applet in EXTRA_APPLETS:
        if not (applets / applet).exists():
            (applets / applet).symlink_to("busybox")

    def run(script: str) -> str:
        lines = []
        for line in script.splitlines():
            name, _, command = line.partition(" ")
            started = time.monotonic()
            subprocess.run([str(applets / "sh"), "-c", command], env={"PATH": str(applets)}, check=True, timeout=300)
            lines.append(f"{name} {started} {time.monotonic()}")
        return "\n".join(lines)
    return run


def _plot(stats: dict[str, dict[str, float]]) -> Callable[[Any], None]:
    def plot(figure: Any) -> None:
        axes = figure.subplots(1, 3)
        for axis, operation in zip(axes, OPERATIONS, strict=True):
            names = list(stats)
            axis.bar(names, [stats[name][operation] for name in names], color=["C0", "C1", "C2"][: len(names)])
            axis.set_title(operation)
            axis.set_ylabel("files/s" if operation == "create" else "MiB/s")
            axis.set_yscale("log")
            axis.tick_params(axis="x", rotation=30)
    return plot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, runs=3)
    parser.add_argument("--mib", type=int, default=64, help="size of the sequential file")
    parser.add_argument("--files", type=int, default=500, help="small files to create")
    parser.add_argument("--flavours", default="virtio-fs,9p,host")
    args = parser.parse_args(argv)
    facts = machine_facts()
    rates: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fs-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        for flavour in args.flavours.split(","):
            data = work / f"data-{flavour}"
            data.mkdir()
            runner = _host_runner(work) if flavour == "host" else None
            with (guest(flavour, work, data) if runner is None else _yield(runner)) as run:
                for index in range(args.runs):
                    _host_file(data / f"r{index}", args.mib)
                    values = {"data": "/data" if runner is None else str(data), "run": index, "mib": args.mib,
                              "files": args.files}
                    commands = {name: command.format(**values) for name, command in COMMANDS.items()}
                    script = (guest_script(commands) if runner is None else
                              "".join(f"{name} {command}\n" for name, command in commands.items()))
                    output = run(script)
                    for name, rate in parse(output, args.mib, args.files, 0.01 if runner is None else 0.001).items():
                        rates.setdefault(flavour, {}).setdefault(name, []).append(rate)
            progress(f"{flavour} done")
    stats = {flavour: {name: s.p50 for name, s in summarize(values).items()} for flavour, values in rates.items()}
    print_facts(facts)
    print_table(f"shared fs in a container, p50 of {args.runs} runs ({args.mib} MiB sequential, {args.files} files)",
                ["filesystem", "write (MiB/s, fsync)", "read (MiB/s, cold in guest)", "create (files/s)"],
                [(flavour, *(f"{values[op]:.0f}" for op in OPERATIONS)) for flavour, values in stats.items()])
    write_results(args, "sharedfs", {"machine": facts, "runs": args.runs, "mib": args.mib, "files": args.files,
                                     "p50": stats, "samples": rates}, _plot(stats))
    return 0


@contextmanager
def _yield(value: Callable[[str], str]) -> Iterator[Callable[[str], str]]:
    yield value


if __name__ == "__main__":
    sys.exit(main())

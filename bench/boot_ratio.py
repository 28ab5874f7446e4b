"""Boot time of the guest image vs a bare busybox initrd of the same kernel, and the agent's import time.

Usage: .venv/bin/python bench/boot_ratio.py [--runs 5] [--compressions lz4] [--cpus MODEL,...]
       [--flavour cloud] [--top 15]

"Agent ready" is the host wall clock from QEMU's launch to the agent's first Health.Check answer.
Boots are interleaved (bare, then each variant, per round) so a noisy host hits all alike; only
numbers from one run of this script compare. ``--cpus`` compares TCG cpu models (default: the QEMU
driver's, kata.hypervisor.accel.TCG_CPU); every variant is booted with each. One VM at a time.

Import times come from ``python3 -X importtime`` as the guest's PID 1: the boot path (everything
PID 1 imports before it serves, /init) and the agent's services, which PID 1 imports in the
background once it serves.
"""

from __future__ import annotations

import argparse
import functools
import io
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from common import retry

from kata.errors import HypervisorError
from kata.image.bootcheck import TCG_CPU, BootedVm, boot_and_check, boot_bare, qemu_argv, write_bare_initrd
from kata.image.cpio import CpioWriter
from kata.image.initrd import build_initrd
from kata.image.kernel import DEFAULT_CACHE_DIR, DEFAULT_FLAVOUR, KernelArtifacts, fetch_kernel
from kata.image.python_runtime import AGENT_LIB_DIR, GUEST_PYTHON

IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")
BACKGROUND_MARK = "--- agent services ---"
# The boot path as init runs it (stand-ins, code cache), then what the background loader imports.
IMPORT_SCRIPT = f"""import sys
sys.path.insert(0, "{AGENT_LIB_DIR}")
from kata.guest import codecache, lazy
lazy.defer(*lazy.UNUSED_IN_GUEST)
codecache.install(("collections",))
import kata.guest.init, kata.guest.server, kata.guest.services.health
sys.stderr.write("{BACKGROUND_MARK}\\n")
codecache.install(("dataclasses",))
import kata.guest.runtime, kata.guest.services, kata.guest.services.containers, kata.guest.services.sandbox
import kata.guest.services.storage, kata.guest.services.network, kata.guest.services.unimplemented
from kata.guest import linux
linux.power_off()
"""


def _median(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"


def _with_import_script(initrd: Path, out: Path) -> None:
    """The initrd plus a second (uncompressed) cpio with /bench-imports.py: the kernel unpacks both.

    A legacy LZ4 stream has no end mark (the kernel would read the second archive as LZ4), so an
    lz4 initrd is decompressed first.
    """
    with initrd.open("rb") as fh:
        lz4 = fh.read(4) == LZ4_LEGACY_MAGIC
    if lz4:
        with out.open("wb") as sink:
            subprocess.run(["lz4", "-dc", str(initrd)], stdout=sink, check=True)
    else:
        shutil.copyfile(initrd, out)
    extra = io.BytesIO()
    writer = CpioWriter(extra)
    writer.add_bytes("bench-imports.py", IMPORT_SCRIPT.encode(), 0o755)
    writer.close()
    with out.open("ab") as fh:
        fh.write(b"\0" * (-fh.tell() % 4) + extra.getvalue())


ImportRow = tuple[int, int, str]


def measure_imports(kernel: KernelArtifacts, initrd: Path, work: Path) -> tuple[list[ImportRow], list[ImportRow]]:
    """``-X importtime`` of the agent's imports as the guest's PID 1: (boot path, background) rows of
    (self us, cumulative us, module)."""
    extended = work / "imports.img"
    _with_import_script(initrd, extended)
    extra = f"rdinit={GUEST_PYTHON} -- -X importtime -IS /bench-imports.py"
    argv = qemu_argv(kernel.vmlinux, extended, console_log=work / "imports.log", extra_cmdline=extra)

    def boot() -> None:
        with BootedVm(argv) as vm:
            vm.wait_exit(120)
            if vm.process is not None and vm.process.returncode == -9:
                raise HypervisorError("QEMU was killed")

    retry(boot, what="import-time boot")
    parts: tuple[list[ImportRow], list[ImportRow]] = ([], [])
    rows = parts[0]
    for line in (work / "imports.log").read_text(errors="replace").splitlines():
        if BACKGROUND_MARK in line:
            rows = parts[1]
        match = IMPORT_LINE.search(line)
        if match:
            rows.append((int(match.group(1)), int(match.group(2)), match.group(3) + match.group(4)))
    return parts


def _print_imports(title: str, rows: list[ImportRow], top: int) -> None:
    total = sum(r[0] for r in rows)
    print(f"\n{title}: {len(rows)} modules, {total / 1e6:.3f} s (sum of self times, -X importtime)\n")
    print("| module | self | cumulative |")
    print("|---|---|---|")
    for self_us, cumulative, name in sorted(rows, reverse=True)[:top]:
        print(f"| {name.strip()} | {self_us / 1e3:.1f} ms | {cumulative / 1e3:.1f} ms |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compressions", default="lz4")
    parser.add_argument("--cpus", default=TCG_CPU, help="TCG cpu models to compare, separated by ;")
    parser.add_argument("--flavour", default=DEFAULT_FLAVOUR)
    parser.add_argument("--top", type=int, default=15, help="slowest imports to list")
    parser.add_argument("--initrd", action="append", default=[], metavar="NAME=PATH",
                        help="also boot this initrd (e.g. an older build) under NAME")
    parser.add_argument("--no-imports", action="store_true", help="skip the import-time boot")
    args = parser.parse_args(argv)
    kernel = fetch_kernel(args.flavour, DEFAULT_CACHE_DIR)
    builds = {f"pykata ({c})": build_initrd(kernel, DEFAULT_CACHE_DIR, compression=c).path
              for c in args.compressions.split(",") if c}
    for item in args.initrd:
        name, _, path = item.partition("=")
        builds[name] = Path(path)
    cpus = args.cpus.split(";") if ";" in args.cpus else [args.cpus]
    variants = [(compression, cpu) for compression in builds for cpu in cpus]
    with tempfile.TemporaryDirectory(prefix="boot-ratio-") as tmp:
        work = Path(tmp)
        bare = work / "bare.cpio"
        write_bare_initrd(bare)
        bare_times: dict[str, list[float]] = {cpu: [] for cpu in cpus}
        ready: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
        exits: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
        for run in range(args.runs):
            for cpu in cpus:
                bare_times[cpu].append(retry(functools.partial(boot_bare, kernel.vmlinux, bare, work, cpu=cpu)))
            for compression, cpu in variants:
                report = retry(functools.partial(boot_and_check, kernel.vmlinux, builds[compression], work,
                                                  cpu=cpu))
                ready[compression, cpu].append(report.to_ready)
                exits[compression, cpu].append(report.to_exit)
            print(f"round {run + 1}/{args.runs} done", file=sys.stderr)
        print(f"kernel {kernel.release}, q35 + PVH vmlinux, TCG, {args.runs} boots each (median (min-max))\n")
        print("| initrd | -cpu | size | launch to agent ready | ready / bare | launch to QEMU exit |")
        print("|---|---|---|---|---|---|")
        for cpu in cpus:
            print(f"| bare busybox, /init powers off | {cpu} | {bare.stat().st_size / 1e6:.1f} MB | - | 1.00 | "
                  f"{_median(bare_times[cpu])} |")
        for compression, cpu in variants:
            ratio = statistics.median(ready[compression, cpu]) / statistics.median(bare_times[cpu])
            size = builds[compression].stat().st_size / 1e6
            print(f"| {compression} | {cpu} | {size:.1f} MB | {_median(ready[compression, cpu])} | "
                  f"{ratio:.2f} | {_median(exits[compression, cpu])} |")
        if args.no_imports:
            return 0
        boot_path, background = measure_imports(kernel, next(iter(builds.values())), work)
        _print_imports("boot path (PID 1 until it serves)", boot_path, args.top)
        _print_imports("agent services (imported in the background)", background, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())

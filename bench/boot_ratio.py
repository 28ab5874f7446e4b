"""Boot time of the guest image vs a bare busybox initrd of the same kernel, and the agent's import time.

Usage: .venv/bin/python bench/boot_ratio.py [--runs 5] [--compressions none,gzip,lz4] [--flavour cloud]

Boots are interleaved (bare, then each variant, per round) so a noisy host hits all alike; only
numbers from one run of this script compare. One VM at a time.
"""

from __future__ import annotations

import argparse
import functools
import io
import re
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from kata.errors import HypervisorError
from kata.image.bootcheck import BootedVm, boot_and_check, boot_bare, qemu_argv, write_bare_initrd
from kata.image.cpio import CpioWriter
from kata.image.initrd import COMPRESSIONS, build_initrd
from kata.image.kernel import DEFAULT_CACHE_DIR, KernelArtifacts, fetch_kernel
from kata.image.python_runtime import AGENT_LIB_DIR, GUEST_PYTHON

IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")
# What the real agent will import on top of init: the ttRPC core and selectors server, the agent protos.
AGENT_IMPORTS = ("kata.guest.init", "kata.ttrpc._channel", "kata.protocols.services",
                 "kata.protocols.pb.agent_pb2", "kata.protocols.pb.health_pb2")
IMPORT_SCRIPT = f"""import sys
sys.path.insert(0, "{AGENT_LIB_DIR}")
import {", ".join(AGENT_IMPORTS)}
from kata.guest import linux
linux.power_off()
"""


T = TypeVar("T")
ATTEMPTS = 3


def _retry(boot: Callable[[], T]) -> T:
    """Run one boot again when it fails: other sessions' test suites SIGKILL QEMUs they did not start."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return boot()
        except (HypervisorError, OSError) as exc:
            if attempt == ATTEMPTS:
                raise
            print(f"boot failed ({exc}), retrying", file=sys.stderr)
    raise AssertionError("unreachable")


def _median(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def _with_import_script(initrd: Path, out: Path) -> None:
    """The initrd plus a second (uncompressed) cpio with /bench-imports.py: the kernel unpacks both."""
    shutil.copyfile(initrd, out)
    extra = io.BytesIO()
    writer = CpioWriter(extra)
    writer.add_bytes("bench-imports.py", IMPORT_SCRIPT.encode(), 0o755)
    writer.close()
    with out.open("ab") as fh:
        fh.write(b"\0" * (-fh.tell() % 4) + extra.getvalue())


def measure_imports(kernel: KernelArtifacts, initrd: Path, work: Path,
                    script: str) -> list[tuple[int, int, str]]:
    """``python3.11 -X importtime -IS <script>`` as the guest's PID 1: (self us, cumulative us, module)."""
    # No agent port in this VM: let init give up on it quickly (then it powers off).
    extra = f"agent.channel_timeout=0.5 rdinit={GUEST_PYTHON} -- -X importtime -IS {script}"
    argv = qemu_argv(kernel.vmlinux, initrd, console_log=work / "imports.log", extra_cmdline=extra)
    def boot() -> None:
        with BootedVm(argv) as vm:
            vm.wait_exit(120)
            if vm.process is not None and vm.process.returncode == -9:
                raise HypervisorError("QEMU was killed")

    _retry(boot)
    rows = []
    for line in (work / "imports.log").read_text(errors="replace").splitlines():
        match = IMPORT_LINE.search(line)
        if match:
            rows.append((int(match.group(1)), int(match.group(2)), match.group(3) + match.group(4)))
    return rows


def _print_imports(title: str, rows: list[tuple[int, int, str]], top: int) -> None:
    total = sum(r[0] for r in rows)
    print(f"\n{title}: {len(rows)} modules, {total / 1e6:.3f} s (sum of self times, -X importtime)")
    for self_us, cumulative, name in sorted(rows, reverse=True)[:top]:
        print(f"  {self_us / 1e3:7.1f} ms self {cumulative / 1e3:8.1f} ms cumulative  {name.strip()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compressions", default=",".join(COMPRESSIONS))
    parser.add_argument("--flavour", default="cloud")
    parser.add_argument("--top", type=int, default=12, help="slowest imports to list")
    args = parser.parse_args(argv)
    kernel = fetch_kernel(args.flavour, DEFAULT_CACHE_DIR)
    compressions = args.compressions.split(",")
    variants = {c: build_initrd(kernel, DEFAULT_CACHE_DIR, compression=c) for c in compressions}
    with tempfile.TemporaryDirectory(prefix="boot-ratio-") as tmp:
        work = Path(tmp)
        bare = work / "bare.cpio"
        write_bare_initrd(bare)
        bare_times: list[float] = []
        pong: dict[str, list[float]] = {c: [] for c in variants}
        exits: dict[str, list[float]] = {c: [] for c in variants}
        for run in range(args.runs):
            bare_times.append(_retry(functools.partial(boot_bare, kernel.vmlinux, bare, work)))
            for compression, build in variants.items():
                report = _retry(functools.partial(boot_and_check, kernel.vmlinux, build.path, work))
                pong[compression].append(report.to_ready)
                exits[compression].append(report.to_exit)
            print(f"round {run + 1}/{args.runs} done", file=sys.stderr)
        base = statistics.median(bare_times)
        print(f"kernel {kernel.release}, q35 + PVH vmlinux, TCG, {args.runs} boots each (median (min-max))\n")
        print("| initrd | size | launch to agent ready | ready / bare | launch to QEMU exit |")
        print("|---|---|---|---|---|")
        print(f"| bare busybox, /init powers off | {bare.stat().st_size / 1e6:.1f} MB | - | 1.00 | "
              f"{_median(bare_times)} |")
        for compression, build in variants.items():
            ratio = statistics.median(pong[compression]) / base
            print(f"| pykata ({compression}) | {build.path.stat().st_size / 1e6:.1f} MB | "
                  f"{_median(pong[compression])} | {ratio:.2f} | {_median(exits[compression])} |")
        first = next(iter(variants.values()))
        _print_imports("guest init imports (PID 1 as it boots today)",
                       measure_imports(kernel, first.path, work, "/init"), args.top)
        extended = work / "imports.img"
        _with_import_script(first.path, extended)
        _print_imports(f"agent imports ({', '.join(AGENT_IMPORTS)})",
                       measure_imports(kernel, extended, work, "/bench-imports.py"), args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())

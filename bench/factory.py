"""VM factory: /bin/true cold vs from a template clone vs from the VM cache; host PSS per sandbox at N clones (+KSM).

Usage: flock /tmp/pykata-vm.lock .venv/bin/python bench/factory.py [--runs 3] [--count 10]
       [--shared-fs virtio-9p|virtio-fs] [--ksm-settle 40] [--no-write]

Start latency: through the sandbox library (what the shim and the OCI CLI call), from ``create`` to the
exit status of ``/bin/true`` in a container, sandbox deleted after each run (not timed); then the same
through ``ctr run --rm`` and ``kata-runtime run``. Cold, template and cache runs alternate, so a noisy host
hits all alike; the template is made once before (not timed: its cost is shown apart); the VM cache
(``kata-runtime factory init``, one cold-booted VM) is full and idle before every run of any kind, so its
refill never competes with a measured start. The ratio compares medians of this run only.

Footprint: ``--count`` idle template sandboxes in one process (the library: no shim daemon per sandbox;
an idle daemon adds ~15 MiB PSS each, see docs/factory.md); after 10 s the PSS (/proc/PID/smaps_rollup)
of every QEMU (and virtiofsd) is summed and divided by N. Then KSM runs its burst for ``--ksm-settle`` s
and the sum is taken again. KSM's previous settings are restored at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from common import add_common_args, machine_facts, print_facts, print_table, progress, pss_kib, write_results
from engines import KATA_RUNTIME, bench_config, containerd, oci_cli_available, run_quiet, vm_cache
from tests.agent.sandbox_support import make_bundle

from kata.config import Config, load_config
from kata.factory import Template
from kata.factory.ksm import BURST, IDLE, KsmRate, ksm_status, set_ksm
from kata.image.build import guest_dir_with_9p
from kata.sandbox import AsyncSandbox

GENERIC = guest_dir_with_9p()  # the default guest dir when its kernel has 9p (minimal), else guest-generic


def make_config(shared_fs: str, template_path: Path, *, template: bool) -> Config:
    config = load_config().config
    hypervisor = replace(config.hypervisor, shared_fs=shared_fs)
    if shared_fs == "virtio-9p":
        hypervisor = replace(hypervisor, kernel=str(GENERIC / "vmlinux"), initrd=str(GENERIC / "kata-initrd.img"),
                             accelerator="tcg")
    factory = replace(config.factory, enable_template=template, template_path=str(template_path))
    return replace(config, hypervisor=hypervisor, factory=factory)


async def true_once(config: Config, root: Path, bundle: Path, name: str) -> float:
    started = time.monotonic()
    async with AsyncSandbox.create(config, root=root, sandbox_id=name) as sb:
        container = await sb.create_container(bundle, container_id="c")
        await container.start()
        assert await container.wait() == 0
        elapsed = time.monotonic() - started
    return elapsed


KINDS = ("cold", "template", "cache")


def config_files(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """The cold, template and VM cache configurations as files (the library, the shim, the OCI CLI and the
    cache server read them). The cache holds cold-booted VMs (``enable_template = false``)."""
    hypervisor: dict[str, object] = {"shared_fs": args.shared_fs}
    if args.shared_fs == "virtio-9p":
        hypervisor.update(kernel=str(GENERIC / "vmlinux"), initrd=str(GENERIC / "kata-initrd.img"), accelerator="tcg")
    return {kind: bench_config(work / f"config-{kind}", hypervisor=hypervisor,
                               factory={"enable_template": kind == "template", "template_path": str(work / "template"),
                                        "vm_cache_number": 1 if kind == "cache" else 0,
                                        "vm_cache_endpoint": str(work / "cache.sock")})
            for kind in KINDS}


def ratio_rows(way: str, kinds: dict[str, list[float]]) -> list[list[str]]:
    cold = statistics.median(kinds["cold"])
    return [[way, kind, f"{statistics.median(values):.2f}", f"{min(values):.2f}", f"{max(values):.2f}",
             f"{statistics.median(values) / cold:.3f}x"] for kind, values in kinds.items()]


def engine_latency(args: argparse.Namespace, work: Path, bundle: Path, files: dict[str, Path],
                   settle: Callable[[], None]) -> dict[str, dict[str, list[float]]]:
    """/bin/true through ``ctr run --rm`` (our shim) and ``kata-runtime run``: cold, template, VM cache."""
    samples: dict[str, dict[str, list[float]]] = {}
    with containerd() as ctr:
        ways: list[tuple[str, Any]] = [("ctr", lambda kind, name: ctr.run_argv(
            name, "true", config_path=str(files[kind])))]
        if not oci_cli_available():
            ways.append(("OCI CLI", lambda kind, name: [str(KATA_RUNTIME), "--kata-config", str(files[kind]),
                                                        "--root", str(work / "oci"), "run", "--bundle",
                                                        str(bundle), name]))
        for way, argv in ways:
            samples[way] = {kind: [] for kind in KINDS}
            for run in range(args.runs):
                for kind in KINDS:
                    settle()
                    started = time.monotonic()
                    run_quiet(argv(kind, f"{way[:3].lower()}-{kind}-{run}"))
                    samples[way][kind].append(time.monotonic() - started)
                    progress(f"{way} run {run + 1}/{args.runs} {kind}: {samples[way][kind][-1]:.2f} s")
    rows = [row for way, kinds in samples.items() for row in ratio_rows(way, kinds)]
    print_table(f"/bin/true through ctr and the OCI CLI ({args.shared_fs})",
                ["path", "source", "median s", "min s", "max s", "ratio"], rows)
    return samples


async def start_latency(args: argparse.Namespace, work: Path, bundle: Path, files: dict[str, Path],
                        settle: Callable[[], None]) -> dict[str, Any]:
    configs = {kind: load_config(str(path)).config for kind, path in files.items()}
    made = time.monotonic()
    info, _ = await Template(configs["template"]).ensure()
    build = time.monotonic() - made
    progress(f"template made in {build:.1f} s (guest boot to ready agent {info.boot_seconds:.2f} s)")
    samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for run in range(args.runs):
        for kind in KINDS:
            await asyncio.to_thread(settle)
            samples[kind].append(await true_once(configs[kind], work / "run", bundle, f"{kind}{run}"))
            progress(f"run {run + 1}/{args.runs} {kind}: {samples[kind][-1]:.2f} s")
    medians = {k: statistics.median(v) for k, v in samples.items()}
    print_table(f"/bin/true through the library ({args.shared_fs}), create to exit status",
                ["path", "source", "median s", "min s", "max s", "ratio"], ratio_rows("library", samples))
    return {"samples": samples, "medians": medians, "ratio": medians["template"] / medians["cold"],
            "cache_ratio": medians["cache"] / medians["cold"], "template_build_seconds": build,
            "template_boot_seconds": info.boot_seconds}


def vmm_pss_mib(sandboxes: list[AsyncSandbox]) -> float:
    return sum(pss_kib(pid) for sb in sandboxes for pid in sb.pids) / 1024


async def footprint(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    config = make_config(args.shared_fs, work / "template", template=True)
    before = ksm_status()
    sandboxes: list[AsyncSandbox] = []
    result: dict[str, Any] = {"count": args.count}
    try:
        set_ksm(None)
        for index in range(args.count):
            sandboxes.append(await AsyncSandbox.create(config, root=work / "run", sandbox_id=f"idle{index}"))
        await asyncio.sleep(10)
        result["pss_mib_per_sandbox"] = vmm_pss_mib(sandboxes) / args.count
        progress(f"{args.count} clones: {result['pss_mib_per_sandbox']:.1f} MiB PSS each (QEMU"
                 f"{' + virtiofsd' if args.shared_fs == 'virtio-fs' else ''})")
        if before.available:
            set_ksm(BURST)
            await asyncio.sleep(args.ksm_settle)
            set_ksm(IDLE)
            status = ksm_status()
            result["ksm_pss_mib_per_sandbox"] = vmm_pss_mib(sandboxes) / args.count
            result["ksm_saved_mib"] = status.saved_mib
            progress(f"after {args.ksm_settle:g} s of KSM: {result['ksm_pss_mib_per_sandbox']:.1f} MiB each "
                     f"(ksm saves {status.saved_mib:.1f} MiB)")
    finally:
        for sb in sandboxes:
            await sb.delete()
        if before.available:
            set_ksm(KsmRate(before.pages_to_scan, before.sleep_millisecs) if before.run == 1 else None)
    rows = [["template clones", f"{result['pss_mib_per_sandbox']:.1f}"]]
    if "ksm_pss_mib_per_sandbox" in result:
        rows.append(["template clones + KSM", f"{result['ksm_pss_mib_per_sandbox']:.1f}"])
    print_table(f"host PSS per idle sandbox at N = {args.count} ({args.shared_fs})", ["mode", "MiB"], rows)
    return result


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="pykata-bench-factory-", dir="/run"))
    try:
        bundle = make_bundle(work / "bundle", "true")
        files = config_files(args, work)
        with vm_cache(files["cache"], work / "cache.sock") as settle:
            data = {"shared_fs": args.shared_fs, "start": await start_latency(args, work, bundle, files, settle)}
            if args.engines:
                data["engines"] = await asyncio.to_thread(engine_latency, args, work, bundle, files, settle)
        if args.count:
            data["footprint"] = await footprint(args, work)
        await Template(make_config(args.shared_fs, work / "template", template=True)).destroy()
        return data
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, runs=3)
    parser.add_argument("--count", type=int, default=10, help="idle clones for the footprint (0: skip)")
    parser.add_argument("--shared-fs", choices=("virtio-9p", "virtio-fs"), default="virtio-9p")
    parser.add_argument("--no-engines", dest="engines", action="store_false",
                        help="skip the ctr and OCI CLI rows (library only)")
    parser.add_argument("--ksm-settle", type=float, default=40.0, help="seconds of KSM burst before measuring")
    args = parser.parse_args()
    facts = machine_facts()
    print_facts(facts)
    data = asyncio.run(main_async(args))
    write_results(args, f"factory-{args.shared_fs}", {"machine": facts, **data})


if __name__ == "__main__":
    main()

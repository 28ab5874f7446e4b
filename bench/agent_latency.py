"""Host-side latency of the guest agent's RPCs in a real VM: boot, sandbox, container, exec round trips.

Usage: flock /tmp/pykata-vm.lock .venv/bin/python bench/agent_latency.py [--runs 3] [--execs 5]
       [--shared-fs virtio-fs|virtio-9p] [--console] [--initrd NAME=PATH ...] [--tcg-cpu MODEL] [--tb-size MIB]

Boots the configured guest image under QEMU (TCG), as tests/vm/test_agent_vm.py does, shares a busybox
rootfs, and times each step from the host (wall clock, medians over ``--runs`` VMs). With
``--console`` the agent logs at debug level (one line per RPC with its duration in the guest) and
the last run's console is printed. ``--initrd`` adds images to compare (runs alternate between
them), ``--tb-size`` overrides the TCG translation cache size. One VM at a time: hold
/tmp/pykata-vm.lock.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path: the bench reuses tests.*)
from tests.agent.support import make_rootfs  # the bench reuses the tests' busybox rootfs

from kata.agent import AgentClient, ContainerRequest, ExecRequest, SandboxRequest, Storage
from kata.config.schema import GUEST_DIR, HypervisorConfig
from kata.hypervisor import accel, shared_fs_for
from kata.hypervisor.qemu import QemuHypervisor
from kata.hypervisor.qemu import spec as qemu_spec
from kata.oci import Process, default_spec

SHARED = "/run/kata-containers/shared/containers"
ENV = ("PATH=/bin",)
FLAVOURS = {
    "virtio-fs": (Path(GUEST_DIR), "virtio-fs", "virtiofs"),
    "virtio-9p": (Path(f"{GUEST_DIR}-generic"), "9p", "9p"),
}
# Steps in table order; each is a host-side wall-clock duration in seconds.
STEPS = (
    ("launch to QEMU running (QMP up)", "qemu"),
    ("launch to first Health.Check", "ready"),
    ("Health.Check round trip, agent still loading", "check"),
    ("CreateSandbox (mounts the share)", "create_sandbox"),
    ("Health.Check round trip, agent idle", "check_idle"),
    ("CreateContainer", "create_container"),
    ("StartContainer", "start_container"),
    ("StartContainer to first stdout byte", "first_byte"),
    ("ExecProcess (`true`)", "exec"),
    ("WaitProcess after ExecProcess returned", "wait"),
    ("exec + read to EOF + wait (`echo hi`)", "exec_cycle"),
    ("terminal exec + resize + output + wait", "tty_cycle"),
    ("RemoveContainer", "remove_container"),
    ("DestroySandbox to QEMU exit", "destroy"),
    ("launch to QEMU exit (whole scenario)", "total"),
)


def guest_config(shared_fs: str, initrd_path: str = "", tb_size: int | None = None, *,
                 debug: bool = False) -> HypervisorConfig:
    """The VM's configuration; ``tb_size`` (MiB of TCG translation cache) replaces the configured default.

    ``debug``: the agent logs every call with its duration (the serial console costs a little time).
    """
    guest_dir, _, _ = FLAVOURS[shared_fs]
    kernel, initrd = guest_dir / "vmlinux", Path(initrd_path) if initrd_path else guest_dir / "kata-initrd.img"
    if not (kernel.exists() and initrd.exists()):
        raise SystemExit(f"no guest image in {guest_dir}: run `kata-runtime image build`")
    config = HypervisorConfig(kernel=str(kernel), initrd=str(initrd), accelerator="tcg", shared_fs=shared_fs,
                              kernel_params="agent.log=debug" if debug else "")
    return config if tb_size is None else replace(config, tcg_tb_size=tb_size)


async def _drain(client: AgentClient, cid: str, exec_id: str) -> bytes:
    data = b""
    while chunk := await client.read_stdout(cid, exec_id):
        data += chunk
    return data


async def _run_exec(client: AgentClient, exec_id: str, *args: str, terminal: bool = False) -> float:
    started = time.monotonic()
    process = Process(args=args, env=(*ENV, "TERM=xterm"), cwd="/", terminal=terminal)
    await client.exec_process(ExecRequest("c1", exec_id, process))
    if terminal:
        await client.tty_win_resize("c1", exec_id, 24, 80)
    await _drain(client, "c1", exec_id)
    await client.wait_process("c1", exec_id)
    return time.monotonic() - started


async def _container_steps(client: AgentClient, times: dict[str, list[float]], execs: int) -> None:
    def mark(name: str, started: float) -> float:
        now = time.monotonic()
        times.setdefault(name, []).append(now - started)
        return now

    spec = default_spec()
    assert spec.process is not None
    spec = replace(spec, root=replace(spec.root, path=f"{SHARED}/c1/rootfs", readonly=False) if spec.root else None,
                   process=replace(spec.process, args=("sh", "-c", "echo up; exec sleep 1000"), env=ENV))
    now = time.monotonic()
    await client.create_container(ContainerRequest("c1", "c1", spec))
    now = mark("create_container", now)
    await client.start_container("c1")
    now = mark("start_container", now)
    await client.read_stdout("c1", "c1", 1)
    mark("first_byte", now)
    for index in range(execs):
        now = time.monotonic()
        await client.exec_process(ExecRequest("c1", f"t{index}", Process(args=("true",), env=ENV, cwd="/")))
        now = mark("exec", now)
        await client.wait_process("c1", f"t{index}")
        mark("wait", now)
        await _drain(client, "c1", f"t{index}")
        times.setdefault("exec_cycle", []).append(await _run_exec(client, f"e{index}", "echo", "hi"))
    times.setdefault("tty_cycle", []).append(
        await _run_exec(client, "tty", "sh", "-c", "stty size", terminal=True))
    now = time.monotonic()
    await client.remove_container("c1")
    mark("remove_container", now)


async def one_run(config: HypervisorConfig, work: Path, times: dict[str, list[float]], execs: int) -> str:
    """One VM from launch to exit; appends each step's seconds to ``times``; returns the console log."""
    shared_fs = config.shared_fs
    shared = work / "shared"
    make_rootfs(shared / "c1")
    vm_dir = work / "vm"
    vm_dir.mkdir()  # ours: the console log stays after the VM is gone
    vm = QemuHypervisor(config, vm_dir, sandbox_id="latency")
    fs = shared_fs_for(config, vm.paths, str(shared))
    assert fs is not None
    await vm.prepare([fs])
    launched = time.monotonic()
    await vm.start(timeout=60)
    times.setdefault("qemu", []).append(time.monotonic() - launched)
    try:
        client = await AgentClient.connect(f"unix://{vm.agent.socket_path}", timeout=30)
        try:
            await client.wait_ready(90)
            now = time.monotonic()
            times.setdefault("ready", []).append(now - launched)
            for _ in range(5):
                now = time.monotonic()
                await client.check()
                times.setdefault("check", []).append(time.monotonic() - now)
            _, driver, fstype = FLAVOURS[shared_fs]
            storage = Storage(driver=driver, source=fs.tag, fstype=fstype, mount_point=SHARED)
            now = time.monotonic()
            await client.create_sandbox(SandboxRequest(sandbox_id="latency", hostname="bench", storages=(storage,)))
            times.setdefault("create_sandbox", []).append(time.monotonic() - now)
            for _ in range(5):
                now = time.monotonic()
                await client.check()
                times.setdefault("check_idle", []).append(time.monotonic() - now)
            await _container_steps(client, times, execs)
            now = time.monotonic()
            await client.destroy_sandbox()
            await asyncio.wait_for(vm.wait(), 20)
            end = time.monotonic()
            times.setdefault("destroy", []).append(end - now)
            times.setdefault("total", []).append(end - launched)
        finally:
            await client.close()
    finally:
        await vm.stop()
    return vm.paths.console_log.read_text(errors="replace")


def _cell(values: list[float]) -> str:
    median = statistics.median(values) * 1000
    return f"{median:.0f} ms ({min(values) * 1000:.0f}-{max(values) * 1000:.0f}, n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="VMs to boot")
    parser.add_argument("--execs", type=int, default=5, help="exec round trips per VM")
    parser.add_argument("--shared-fs", choices=sorted(FLAVOURS), default="virtio-fs")
    parser.add_argument("--console", action="store_true",
                        help="agent.log=debug (each call's duration in the guest); print the last console log")
    parser.add_argument("--initrd", action="append", default=[], metavar="NAME=PATH",
                        help="compare with this initrd (e.g. an older build); runs alternate between images")
    parser.add_argument("--tcg-cpu", default="", help="TCG cpu model (default: the QEMU driver's)")
    parser.add_argument("--tb-size", type=int, default=None,
                        help="TCG translation cache in MiB (default: the configured tcg_tb_size; 0: QEMU's)")
    args = parser.parse_args(argv)
    cpu = args.tcg_cpu or accel.TCG_CPU
    setattr(qemu_spec, "TCG_CPU", cpu)  # noqa: B010 - the driver's spec builder reads this name
    images = {"this build": ""} | {name: path for name, _, path in (i.partition("=") for i in args.initrd)}
    times: dict[str, dict[str, list[float]]] = {name: {} for name in images}
    console = ""
    for run in range(args.runs):
        for name, initrd in images.items():
            with tempfile.TemporaryDirectory(prefix="agent-latency-") as tmp:
                config = guest_config(args.shared_fs, initrd, args.tb_size, debug=args.console)
                console = asyncio.run(one_run(config, Path(tmp), times[name], args.execs))
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    tb_size = guest_config(args.shared_fs, tb_size=args.tb_size).tcg_tb_size
    print(f"{args.shared_fs}, q35 + PVH, TCG -cpu {cpu}, tb-size {tb_size or 'default'} MiB; host wall clock, "
          "median (min-max, samples)\n")
    print("| step | " + " | ".join(images) + " |")
    print("|---|" + "---|" * len(images))
    for title, key in STEPS:
        print(f"| {title} | " + " | ".join(_cell(times[name][key]) if key in times[name] else "-"
                                          for name in images) + " |")
    if args.console:
        print("\nguest console (last run):\n" + console)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""QemuHypervisor against a fake QEMU (a QMP-speaking script): start, stop escalation, failures, cleanup."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kata.config.schema import HypervisorConfig
from kata.errors import HypervisorError, StateError
from kata.hypervisor.base import VmEvent, shared_fs_for
from kata.hypervisor.devices import BlockDevice, RootfsImage
from kata.hypervisor.qemu.driver import QemuHypervisor
from kata.hypervisor.state import VmState

T = TypeVar("T")
FAKE_QMP = Path(__file__).with_name("fake_qmp.py")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def script(path: Path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def config(tmp_path: Path) -> HypervisorConfig:
    qemu = script(tmp_path / "fake-qemu", f'exec {sys.executable} {FAKE_QMP} "$@"')
    virtiofsd = script(tmp_path / "fake-virtiofsd", "exec sleep 600")
    return HypervisorConfig(path=qemu, virtio_fs_daemon=virtiofsd, kernel="/k/vmlinux", initrd="", image="")


def make_vm(config: HypervisorConfig, workdir: Path) -> QemuHypervisor:
    return QemuHypervisor(config, workdir, sandbox_id="t1", accelerator="tcg")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_start_check_stop_removes_what_it_created(config: HypervisorConfig, tmp_path: Path) -> None:
    workdir = tmp_path / "vm"

    async def scenario() -> tuple[tuple[int, ...], list[str]]:
        vm = make_vm(config, workdir)
        await vm.prepare()
        await vm.start(timeout=10)
        await vm.check()
        pids = vm.pids()
        files = sorted(p.name for p in workdir.iterdir())
        await vm.stop()
        assert await vm.wait() == 0
        assert vm.state is VmState.STOPPED and vm.pids() == ()
        return pids, files

    pids, files = run(scenario())
    assert len(pids) == 1 and not alive(pids[0])
    assert "qmp.sock" in files
    assert not workdir.exists()


@pytest.mark.parametrize(("ours", "seen"), [(None, "65536"), ("262144", "262144")])
def test_qemu_gets_a_fixed_malloc_mmap_threshold_unless_the_environment_has_one(
        config: HypervisorConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ours: str | None,
        seen: str) -> None:
    if ours is None:
        monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    else:
        monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", ours)

    async def scenario() -> dict[str, str]:
        vm = make_vm(config, tmp_path / "vm")
        await vm.prepare()
        await vm.start(timeout=10)
        try:
            raw = Path(f"/proc/{vm.pids()[0]}/environ").read_bytes()
        finally:
            await vm.stop()
        return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)

    environ = run(scenario())
    assert environ["MALLOC_MMAP_THRESHOLD_"] == seen
    assert environ["PATH"] == os.environ["PATH"]  # the rest of our environment is passed on


def test_a_failing_qemu_leaves_nothing_and_says_why(config: HypervisorConfig, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "fail")
    workdir = tmp_path / "vm"
    vm = make_vm(config, workdir)

    async def scenario() -> None:
        await vm.prepare()
        await vm.start(timeout=10)

    with pytest.raises(HypervisorError, match="could not open kernel file"):
        run(scenario())
    assert vm.state is VmState.STOPPED and vm.pids() == ()
    assert not workdir.exists()
    run(vm.stop())  # idempotent


def test_start_gives_up_at_its_timeout_and_kills_qemu(config: HypervisorConfig, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "silent")
    workdir = tmp_path / "vm"
    workdir.mkdir()
    (workdir / "console.log").write_text("[    0.1] early boot\n")
    vm = make_vm(config, workdir)
    vm.term_grace = 0.5

    async def scenario() -> None:
        await vm.prepare()
        await vm.start(timeout=0.5)

    started = time.monotonic()
    with pytest.raises(HypervisorError, match=r"not ready within 0.5 s .*console: \[    0.1\] early boot"):
        run(scenario())
    assert time.monotonic() - started < 5
    assert vm.pids() == ()
    assert sorted(p.name for p in workdir.iterdir()) == ["console.log"]  # the caller's dir stays


def test_stop_escalates_from_quit_to_sigkill(config: HypervisorConfig, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_MODE", "stubborn")
    vm = make_vm(config, tmp_path / "vm")
    vm.term_grace = 0.3

    async def scenario() -> int:
        await vm.prepare()
        await vm.start(timeout=10)
        await vm.stop(timeout=0.3)
        return await vm.wait()

    assert run(scenario()) == -signal.SIGKILL
    assert not (tmp_path / "vm").exists()


def test_a_qemu_that_dies_is_noticed(config: HypervisorConfig, tmp_path: Path) -> None:
    vm = make_vm(config, tmp_path / "vm")
    events: list[VmEvent] = []
    vm.subscribe(events.append)

    async def scenario() -> int:
        await vm.prepare()
        await vm.start(timeout=10)
        os.kill(vm.pids()[0], signal.SIGKILL)
        status = await asyncio.wait_for(vm.wait(), 5)
        assert vm.state is VmState.EXITED
        with pytest.raises(HypervisorError, match="vm exited"):
            await vm.check()
        with pytest.raises(StateError):
            await vm.pause()
        await vm.stop()
        return status

    assert run(scenario()) == -signal.SIGKILL
    assert [e.name for e in events][-1:] == ["EXITED"] and events[-1].data == {"status": -signal.SIGKILL}
    assert not (tmp_path / "vm").exists()


def test_virtiofsd_runs_beside_qemu_and_goes_with_it(config: HypervisorConfig, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    vm = make_vm(config, tmp_path / "vm")

    async def scenario() -> tuple[int, ...]:
        fs = shared_fs_for(config, vm.paths, str(shared))
        assert fs is not None
        await vm.prepare([fs])
        await vm.start(timeout=10)
        pids = vm.pids()
        assert (tmp_path / "vm" / "virtiofsd.sock").is_socket()
        await vm.stop()
        return pids

    pids = run(scenario())
    assert len(pids) == 2 and not any(alive(pid) for pid in pids)
    assert not (tmp_path / "vm").exists()


def test_a_missing_shared_dir_fails_start_cleanly(config: HypervisorConfig, tmp_path: Path) -> None:
    vm = make_vm(config, tmp_path / "vm")

    async def scenario() -> None:
        fs = shared_fs_for(config, vm.paths, str(tmp_path / "missing"))
        assert fs is not None
        await vm.prepare([fs])
        await vm.start(timeout=10)

    with pytest.raises(HypervisorError, match=r"shared directory .* does not exist"):
        run(scenario())
    assert not (tmp_path / "vm").exists() and vm.pids() == ()


def test_cold_plug_is_checked_against_the_machine(config: HypervisorConfig, tmp_path: Path) -> None:
    microvm = HypervisorConfig(**{**config.__dict__, "machine_type": "microvm"})
    vm = make_vm(microvm, tmp_path / "vm")

    async def scenario() -> None:
        await vm.prepare()
        disk = BlockDevice("/img/d.raw", "disk0")
        await vm.add_device(disk)
        with pytest.raises(HypervisorError, match="duplicate device ids disk0"):
            await vm.add_device(disk)
        with pytest.raises(HypervisorError, match=r"virtio-pmem .* needs PCI"):
            await vm.add_device(RootfsImage("/img/rootfs.img", size=1 << 20))
        await vm.remove_device(disk)
        assert [d.id for d in vm.spec.devices] == ["console", "agent"]
        assert not vm.capabilities().vcpu_hotplug

    run(scenario())


def test_a_missing_qemu_binary_is_a_hypervisor_error(tmp_path: Path) -> None:
    vm = make_vm(HypervisorConfig(path=str(tmp_path / "no-qemu"), image=""), tmp_path / "vm")

    async def scenario() -> None:
        await vm.prepare()
        await vm.start(timeout=10)

    with pytest.raises(HypervisorError, match=r"cannot run qemu .*no-qemu.*: No such file"):
        run(scenario())
    assert not (tmp_path / "vm").exists()

"""One conformance suite every Hypervisor driver passes: FakeHypervisor here, QemuHypervisor in a real VM."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kata.config.schema import HypervisorConfig
from kata.errors import HypervisorError, StateError
from kata.hypervisor import BlockDevice, Capabilities, Hypervisor, VmEvent, VmState, new_hypervisor
from kata.hypervisor.fake import FakeHypervisor
from kata.hypervisor.registry import register_hypervisor
from tests.vm.tiny_guest import GUEST_KERNEL, GuestShell, build_tiny_initrd

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def state(vm: Hypervisor) -> VmState:
    return vm.state  # a call, so mypy does not narrow the state across awaits


@dataclass
class Subject:
    """How to make a driver's VMs, a VM whose start fails, and a VM that exits on its own."""

    name: str
    config: HypervisorConfig

    def make(self, workdir: Path, **config_changes: Any) -> Hypervisor:
        config = HypervisorConfig(**{**self.config.__dict__, **config_changes})
        return new_hypervisor(self.name, config, workdir, sandbox_id="conf", accelerator="tcg")

    def make_failing(self, workdir: Path) -> Hypervisor:
        vm = self.make(workdir, kernel=str(workdir.parent / "no-such-kernel"))
        if isinstance(vm, FakeHypervisor):
            vm.fail_next("start", HypervisorError("could not open kernel file"))
        return vm

    async def end_guest(self, vm: Hypervisor) -> None:
        if isinstance(vm, FakeHypervisor):
            vm.crash(0)
            return
        shell = await GuestShell.connect(vm.agent.socket_path)
        try:
            assert (await shell.ping()).startswith("PONG")
            await shell.line("POWEROFF")
        finally:
            await shell.close()


@pytest.fixture(scope="module")
def tiny_initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not GUEST_KERNEL.exists():
        pytest.skip(f"no guest kernel at {GUEST_KERNEL} (run `make kernel`)")
    return build_tiny_initrd(tmp_path_factory.mktemp("initrd"))


@pytest.fixture(params=["fake", pytest.param("qemu", marks=pytest.mark.vm)])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    if request.param == "fake":
        register_hypervisor("fake", FakeHypervisor)
        yield Subject("fake", HypervisorConfig())
        return
    initrd = request.getfixturevalue("tiny_initrd")
    yield Subject("qemu", HypervisorConfig(initrd=str(initrd), kernel=str(GUEST_KERNEL)))


def test_lifecycle_with_pause_and_events(subject: Subject, tmp_path: Path) -> None:
    vm = subject.make(tmp_path / "vm")
    events: list[VmEvent] = []
    vm.subscribe(events.append)

    async def scenario() -> None:
        assert state(vm) is VmState.NEW
        await vm.prepare()
        assert vm.agent.address == f"unix://{tmp_path}/vm/agent.sock"
        await vm.start(timeout=30)
        await vm.check()
        assert vm.pids()
        await vm.pause()
        assert state(vm) is VmState.PAUSED
        await vm.check()
        await vm.resume()
        assert state(vm) is VmState.RUNNING
        await vm.stop()
        assert isinstance(await vm.wait(), int)

    run(scenario())
    assert vm.state is VmState.STOPPED and vm.pids() == ()
    names = [e.name for e in events]
    assert names.index("STOP") < names.index("RESUME") < names.index("EXITED")
    run(vm.stop())  # idempotent


def test_verbs_are_guarded_by_state(subject: Subject, tmp_path: Path) -> None:
    vm = subject.make(tmp_path / "vm")

    async def scenario() -> None:
        with pytest.raises(StateError) as info:
            await vm.start()
        assert info.value.state == "new" and info.value.required == ("prepared",)
        await vm.prepare()
        verbs = (vm.pause(), vm.resume(), vm.wait(), vm.check(), vm.resize_vcpus(2), vm.resize_memory(512))
        for verb in verbs:
            with pytest.raises(StateError):
                await verb
        await vm.start(timeout=30)
        with pytest.raises(StateError):
            await vm.prepare()
        with pytest.raises(StateError):
            await vm.resume()
        await vm.stop()
        with pytest.raises(StateError):
            await vm.start()

    run(scenario())


def test_a_failed_start_leaves_nothing(subject: Subject, tmp_path: Path) -> None:
    workdir = tmp_path / "vm"
    vm = subject.make_failing(workdir)

    async def scenario() -> None:
        await vm.prepare()
        with pytest.raises(HypervisorError, match=r"start vm: .*could not open kernel file"):
            await vm.start(timeout=30)

    run(scenario())
    assert vm.state is VmState.STOPPED and vm.pids() == ()
    assert not workdir.exists()


def test_a_guest_that_ends_is_seen_as_exited(subject: Subject, tmp_path: Path) -> None:
    vm = subject.make(tmp_path / "vm")
    events: list[str] = []
    vm.subscribe(lambda event: events.append(event.name))

    async def scenario() -> int:
        await vm.prepare()
        await vm.start(timeout=30)
        await subject.end_guest(vm)
        status = await asyncio.wait_for(vm.wait(), 60)
        assert vm.state is VmState.EXITED
        with pytest.raises(HypervisorError, match="exited"):
            await vm.check()
        await vm.stop()
        return status

    assert run(scenario()) == 0
    assert vm.state is VmState.STOPPED and events[-1] == "EXITED"


def test_cold_plug_and_unplug_before_start(subject: Subject, tmp_path: Path) -> None:
    vm = subject.make(tmp_path / "vm")
    disk = BlockDevice(str(tmp_path / "disk.img"), "disk0", read_only=True)

    async def scenario() -> None:
        await vm.prepare()
        await vm.add_device(disk)
        with pytest.raises(HypervisorError):
            await vm.add_device(disk)  # same id twice
        await vm.remove_device(disk)
        with pytest.raises(HypervisorError):
            await vm.remove_device(disk)
        assert isinstance(vm.capabilities(), Capabilities)
        await vm.stop()

    run(scenario())
    assert vm.state is VmState.STOPPED


def test_fake_records_calls_and_injects_events() -> None:
    vm = FakeHypervisor(sandbox_id="f")
    seen: list[str] = []
    vm.subscribe(lambda event: seen.append(event.name))

    async def scenario() -> None:
        await vm.prepare()
        await vm.start()
        vm.inject(VmEvent("GUEST_PANICKED", {"action": "pause"}))
        vm.fail_next("add_device", HypervisorError("refused"))
        with pytest.raises(HypervisorError, match="refused"):
            await vm.add_device(BlockDevice("/x", "d0"))
        await vm.add_device(BlockDevice("/x", "d0"))
        assert await vm.resize_vcpus(1) == 1
        assert await vm.resize_memory(512) == 512
        await vm.stop()

    run(scenario())
    assert seen == ["GUEST_PANICKED", "EXITED"]
    assert [c[0] for c in vm.calls] == ["prepare", "start", "add_device", "add_device", "resize_vcpus",
                                         "resize_memory", "stop"]

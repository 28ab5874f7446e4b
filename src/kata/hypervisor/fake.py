"""FakeHypervisor: the Hypervisor interface without a VM, recording calls, for tests of the layers above."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

from kata.config.schema import HypervisorConfig
from kata.errors import HypervisorError, StateError
from kata.hypervisor.base import Capabilities, Hypervisor, VmEvent, with_standard_devices
from kata.hypervisor.devices import AgentChannel, Device
from kata.hypervisor.state import VmState

__all__ = ["FAKE_PID", "FakeHypervisor"]

# Above the kernel's largest pid_max (2**22): never a real process, so signalling it cannot hurt.
FAKE_PID = 4194305

FULL_CAPABILITIES = Capabilities(block_hotplug=True, net_hotplug=True, fs_hotplug=True, vcpu_hotplug=True,
                                 memory_hotplug=True, shared_fs=frozenset({"virtio-fs", "virtio-9p"}),
                                 agent_transports=frozenset({"serial", "vsock"}))


class FakeHypervisor(Hypervisor):
    """Keeps the lifecycle, devices, vCPUs and memory in memory; ``calls`` records every verb.

    Test hooks: ``fail_next(verb, exc)`` makes the next call of a verb raise ``exc`` (a failed
    ``start`` ends in stopped, as with a real VMM); ``crash(status)`` ends the "VMM" on its own;
    ``inject(event)`` delivers a VM event to subscribers.
    """

    name = "fake"

    def __init__(self, config: HypervisorConfig | None = None, workdir: Path = Path("/run/kata/fake"), *,
                 sandbox_id: str = "", accelerator: str | None = "tcg",
                 capabilities: Capabilities = FULL_CAPABILITIES) -> None:
        super().__init__(config or HypervisorConfig(), workdir, sandbox_id=sandbox_id,
                         accelerator=accelerator)
        self.calls: list[tuple[object, ...]] = []
        self.cold: list[Device] = []
        self.hot: dict[str, Device] = {}
        self.vcpus = self.config.default_vcpus
        self.memory_mib = self.config.default_memory
        self._caps = capabilities
        self._failures: dict[str, BaseException] = {}
        self._exited: asyncio.Future[int] | None = None
        self._status: int | None = None

    def fail_next(self, verb: str, exc: BaseException) -> None:
        """Make the next call of ``verb`` (``start``, ``add_device``, ...) raise ``exc``."""
        self._failures[verb] = exc

    def inject(self, event: VmEvent) -> None:
        """Deliver ``event`` to subscribers as if the VMM had reported it."""
        self._emit(event)

    def crash(self, status: int = -9) -> None:
        """The "VMM" ends on its own with ``status``.

        Raises:
            StateError: unless running or paused.
        """
        if not self._life.live:
            raise StateError("fake vm: only a live vm can crash", state=self.state.value,
                             required=("running", "paused"))
        self._life.move(VmState.EXITED)
        self._end(status)

    def _end(self, status: int) -> None:
        if self._exited is not None and not self._exited.done():
            self._status = status
            self._exited.set_result(status)
            self._emit(VmEvent("EXITED", {"status": status}))

    def _record(self, verb: str, *args: object) -> None:
        self.calls.append((verb, *args))
        if (exc := self._failures.pop(verb, None)) is not None:
            raise exc

    @property
    def agent(self) -> AgentChannel:
        """See :meth:`Hypervisor.agent`."""
        found = next((d for d in self.cold if isinstance(d, AgentChannel)), None)
        if found is None:
            raise StateError("fake vm: no agent channel before prepare", state=self.state.value,
                             required=("prepared",))
        return found

    async def prepare(self, devices: Sequence[Device] = ()) -> None:
        """See :meth:`Hypervisor.prepare`."""
        self._life.require("prepare")
        self._record("prepare", tuple(devices))
        self.cold = list(with_standard_devices(self.paths, devices))
        self._life.move(VmState.PREPARED)

    async def start(self, timeout: float = 30.0) -> None:
        """See :meth:`Hypervisor.start`."""
        self._life.require("start")
        try:
            self._record("start", timeout)
        except BaseException as exc:
            self._life.move(VmState.STOPPED)
            if isinstance(exc, HypervisorError):
                raise HypervisorError(f"start vm: {exc}") from exc
            raise
        self._exited = asyncio.get_running_loop().create_future()
        self._life.move(VmState.RUNNING)

    async def stop(self, timeout: float = 10.0) -> None:
        """See :meth:`Hypervisor.stop`."""
        self.calls.append(("stop", timeout))
        if self.state is VmState.STOPPED:
            return
        self._end(0)
        self.hot.clear()
        self._life.move(VmState.STOPPED)

    async def wait(self) -> int:
        """See :meth:`Hypervisor.wait`."""
        self._life.require("wait")
        self._record("wait")
        if self._exited is None:
            raise StateError("fake vm: never started", state=self.state.value, required=("running",))
        return await asyncio.shield(self._exited)

    async def pause(self) -> None:
        """See :meth:`Hypervisor.pause`."""
        self._life.require("pause")
        self._record("pause")
        self._life.move(VmState.PAUSED)
        self._emit(VmEvent("STOP"))

    async def resume(self) -> None:
        """See :meth:`Hypervisor.resume`."""
        self._life.require("resume")
        self._record("resume")
        self._life.move(VmState.RUNNING)
        self._emit(VmEvent("RESUME"))

    async def add_device(self, device: Device) -> None:
        """See :meth:`Hypervisor.add_device`."""
        if self.state is not VmState.PREPARED:
            self._life.require("hotplug")
        self._record("add_device", device)
        if any(d.id == device.id for d in (*self.cold, *self.hot.values())):
            raise HypervisorError(f"add device {device.id}: duplicate id")
        if self.state is VmState.PREPARED:
            self.cold.append(device)
        else:
            self.hot[device.id] = device

    async def remove_device(self, device: Device, timeout: float = 10.0) -> None:
        """See :meth:`Hypervisor.remove_device`."""
        if self.state is not VmState.PREPARED:
            self._life.require("hotplug")
        self._record("remove_device", device)
        if self.state is VmState.PREPARED and device in self.cold:
            self.cold.remove(device)
        elif self.hot.pop(device.id, None) is None:
            raise HypervisorError(f"remove device {device.id}: not plugged (or not hot-removable)")

    async def resize_vcpus(self, count: int) -> int:
        """See :meth:`Hypervisor.resize_vcpus`."""
        self._life.require("resize")
        self._record("resize_vcpus", count)
        maximum = self.config.default_maxvcpus or os.cpu_count() or 1
        if not self.config.default_vcpus <= count <= maximum:
            raise HypervisorError(f"resize vcpus: {count} is outside {self.config.default_vcpus}..{maximum}")
        self.vcpus = count
        return count

    async def resize_memory(self, mib: int) -> int:
        """See :meth:`Hypervisor.resize_memory`."""
        self._life.require("resize")
        self._record("resize_memory", mib)
        if mib < self.memory_mib:
            raise HypervisorError(f"resize memory: cannot shrink from {self.memory_mib} to {mib} MiB")
        self.memory_mib = mib
        return mib

    def capabilities(self) -> Capabilities:
        """See :meth:`Hypervisor.capabilities`."""
        return self._caps

    def pids(self) -> tuple[int, ...]:
        """See :meth:`Hypervisor.pids`: one impossible pid while live."""
        return (FAKE_PID,) if self._life.live else ()

    async def check(self) -> None:
        """See :meth:`Hypervisor.check`."""
        self._life.require("check")
        self._record("check")
        if self.state is VmState.EXITED:
            raise HypervisorError(f"vm exited (status {self._status})")

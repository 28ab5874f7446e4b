"""Control of a sandbox's VM: through the Hypervisor that started it, or from its record in another process."""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol, runtime_checkable

from kata.errors import HypervisorError
from kata.hypervisor import Hypervisor, VmEvent
from kata.log import fields
from kata.sandbox.procs import is_alive, process_ref, terminate, wait_gone
from kata.sandbox.records import ProcessRef, VmRecord

__all__ = ["AdoptedVm", "Detachable", "OwnedVm", "VmControl"]

_log = logging.getLogger("kata.sandbox")
HELPER_GRACE = 2.0  # virtiofsd exits by itself once QEMU is gone; give it this long first


@runtime_checkable
class Detachable(Protocol):
    """A hypervisor that can hand its VM over: forget the VMM processes without stopping them."""

    async def detach(self) -> None:
        """Release the VMM and helpers so they outlive this process."""


class VmControl(abc.ABC):
    """What a sandbox needs from its VM: stop, pause, resume, liveness and an exit notification."""

    def __init__(self, sandbox_id: str) -> None:
        self.sandbox_id = sandbox_id

    @property
    @abc.abstractmethod
    def record(self) -> VmRecord:
        """The VM as state.json keeps it."""

    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether the VMM process still runs."""

    @abc.abstractmethod
    def on_exit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in the event loop) once when the VMM ends while this object watches."""

    @abc.abstractmethod
    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the VM and its helpers; idempotent, never raises for a VM that is already gone."""

    @abc.abstractmethod
    async def pause(self) -> None:
        """Freeze the guest.

        Raises:
            HypervisorError: the VMM refused or cannot be reached.
        """

    @abc.abstractmethod
    async def resume(self) -> None:
        """Unfreeze the guest.

        Raises:
            HypervisorError: the VMM refused or cannot be reached.
        """

    async def detach(self) -> bool:
        """Let the VM outlive this process; whether the driver could (else it lives as long as we do)."""
        return False

    @abc.abstractmethod
    def unwatch(self) -> None:
        """Stop watching for the VMM's exit."""


def _live_refs(hypervisor: Hypervisor) -> tuple[ProcessRef, ...]:
    """The hypervisor's live processes (VMM first, then helpers) as state.json records them."""
    refs = (process_ref(pid) for pid in hypervisor.pids())
    return tuple(r for r in refs if r is not None)


class OwnedVm(VmControl):
    """The VM this process started, driven through its Hypervisor."""

    def __init__(self, hypervisor: Hypervisor, *, source: str = "direct") -> None:
        super().__init__(hypervisor.sandbox_id)
        self.hypervisor = hypervisor
        self._unsubscribe: Callable[[], None] | None = None
        qmp = hypervisor.paths.qmp_socket
        self._record = VmRecord(hypervisor=hypervisor.name, processes=_live_refs(hypervisor),
                                agent_url=hypervisor.agent.address, qmp_socket=str(qmp) if qmp.exists() else "",
                                console_log=str(hypervisor.paths.console_log), source=source)

    @property
    def record(self) -> VmRecord:
        """See :meth:`VmControl.record`."""
        return self._record

    def alive(self) -> bool:
        """See :meth:`VmControl.alive`."""
        return bool(self.hypervisor.pids())

    def on_exit(self, callback: Callable[[], None]) -> None:
        """See :meth:`VmControl.on_exit`."""
        def event(vm_event: VmEvent) -> None:
            if vm_event.name == "EXITED":
                callback()
        self._unsubscribe = self.hypervisor.subscribe(event)

    def unwatch(self) -> None:
        """See :meth:`VmControl.unwatch`."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    async def stop(self, timeout: float = 10.0) -> None:
        """See :meth:`VmControl.stop`."""
        self.unwatch()
        try:
            await self.hypervisor.stop(timeout)
        except HypervisorError as exc:  # stopped anyway; what is left is logged
            _log.warning("stop vm: %s", exc, extra=fields(sandbox=self.sandbox_id))

    async def pause(self) -> None:
        """See :meth:`VmControl.pause`."""
        await self.hypervisor.pause()

    async def resume(self) -> None:
        """See :meth:`VmControl.resume`."""
        await self.hypervisor.resume()

    async def detach(self) -> bool:
        """See :meth:`VmControl.detach`: needs a driver with ``detach()``. The record is brought up to
        date first (helpers started since, e.g. a hotplugged share's virtiofsd)."""
        self.unwatch()
        if not isinstance(self.hypervisor, Detachable):
            return False
        self._record = replace(self._record, processes=_live_refs(self.hypervisor))
        await self.hypervisor.detach()
        return True


class AdoptedVm(VmControl):
    """A VM another process started, known from state.json: signals by pidfd, QMP for pause/resume."""

    def __init__(self, sandbox_id: str, record: VmRecord) -> None:
        super().__init__(sandbox_id)
        self._record = record
        self._watch: asyncio.Task[None] | None = None

    @property
    def record(self) -> VmRecord:
        """See :meth:`VmControl.record`."""
        return self._record

    @property
    def _vmm(self) -> tuple[ProcessRef, ...]:
        return self._record.processes[:1]

    def alive(self) -> bool:
        """See :meth:`VmControl.alive`."""
        return any(is_alive(ref) for ref in self._vmm)

    def on_exit(self, callback: Callable[[], None]) -> None:
        """See :meth:`VmControl.on_exit`."""
        async def watch() -> None:
            await wait_gone(self._vmm, float("inf"))
            callback()
        self._watch = asyncio.get_running_loop().create_task(watch(), name=f"vm-exit-{self.sandbox_id[:12]}")

    def unwatch(self) -> None:
        """See :meth:`VmControl.unwatch`."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    async def stop(self, timeout: float = 10.0) -> None:
        """See :meth:`VmControl.stop`: SIGTERM (QEMU quits cleanly on it), SIGKILL after ``timeout``."""
        self.unwatch()
        await terminate(self._vmm, timeout)
        helpers = self._record.processes[1:]
        if not await wait_gone(helpers, HELPER_GRACE):
            await terminate(helpers, HELPER_GRACE)
        _log.info("vm stopped", extra=fields(sandbox=self.sandbox_id, pids=[r.pid for r in self._record.processes]))

    async def _qmp(self, command: str) -> None:
        if not self._record.qmp_socket or self._record.hypervisor != "qemu":
            raise HypervisorError(f"{self._record.hypervisor} vm of another process: no QMP socket to {command}")
        from kata.hypervisor.qemu.qmp import QmpClient

        client = QmpClient(f"pykata-{self.sandbox_id[:12]}")
        try:
            async with asyncio.timeout(5.0):
                await client.connect(self._record.qmp_socket, alive=self.alive)
                await client.execute(command)
        except TimeoutError as exc:
            raise HypervisorError(f"qmp {command}: no answer within 5 s (does another process hold the "
                                  "monitor?)") from exc
        finally:
            await client.close()

    async def pause(self) -> None:
        """See :meth:`VmControl.pause` (QMP stop)."""
        await self._qmp("stop")

    async def resume(self) -> None:
        """See :meth:`VmControl.resume` (QMP cont)."""
        await self._qmp("cont")

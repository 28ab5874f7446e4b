"""The one hypervisor interface every driver (QEMU, the fake, later Firecracker, ...) implements."""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

from kata.config.schema import HypervisorConfig
from kata.hypervisor.devices import AgentChannel, Console, Device, SharedFs
from kata.hypervisor.state import Lifecycle, VmState
from kata.log import fields

__all__ = [
    "SHARED_FS_TAG",
    "Adoptable",
    "Capabilities",
    "EventCallback",
    "Hypervisor",
    "MemoryImage",
    "Templatable",
    "VmEvent",
    "VmPaths",
    "shared_fs_for",
    "with_standard_devices",
]

SHARED_FS_TAG = "kataShared"  # Kata's tag for the sandbox's shared directory
_log = logging.getLogger("kata.hypervisor")


@dataclass(frozen=True)
class Capabilities:
    """What a driver can do on the configured machine."""

    block_hotplug: bool = False
    net_hotplug: bool = False
    fs_hotplug: bool = False
    vcpu_hotplug: bool = False
    memory_hotplug: bool = False
    pause: bool = True
    shared_fs: frozenset[str] = frozenset()
    agent_transports: frozenset[str] = frozenset({"serial"})


@dataclass(frozen=True)
class VmEvent:
    """Something the VMM reported: a QMP event name (SHUTDOWN, STOP, ...) or EXITED (process ended)."""

    name: str
    data: Mapping[str, object] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)


EventCallback = Callable[[VmEvent], None]


@dataclass(frozen=True)
class VmPaths:
    """Where one VM keeps its sockets and console log: a working dir the caller owns."""

    workdir: Path

    @property
    def qmp_socket(self) -> Path:
        """The QMP (monitor) socket."""
        return self.workdir / "qmp.sock"

    @property
    def agent_socket(self) -> Path:
        """Host end of the agent's virtio-serial port."""
        return self.workdir / "agent.sock"

    @property
    def virtiofsd_socket(self) -> Path:
        """The vhost-user socket of the virtiofsd serving the shared dir."""
        return self.workdir / "virtiofsd.sock"

    @property
    def console_log(self) -> Path:
        """The guest's serial console output."""
        return self.workdir / "console.log"

    @property
    def qemu_log(self) -> Path:
        """QEMU's own stderr."""
        return self.workdir / "qemu.log"


@dataclass(frozen=True)
class MemoryImage:
    """Guest RAM kept in a file, the basis of VM templates (QEMU: x-ignore-shared migration).

    ``shared``: guest writes reach the file (a template being made, or a clone's private copy of it);
    otherwise they stay in the VM's own copy-on-write pages and the file never changes (a clone).
    ``restore_from``: the saved device state the VM starts from instead of booting ("" boots).
    """

    memory_path: str
    shared: bool
    restore_from: str = ""


@runtime_checkable
class Templatable(Protocol):
    """A driver whose VMs can be saved as templates and started as clones of one."""

    def use_memory_image(self, image: MemoryImage) -> None:
        """Put guest RAM in ``image`` (before start).

        Raises:
            StateError: the VM was started already.
        """

    def clone_identity(self) -> str:
        """What a template and its clones must have in common (the VMM's devices, machine, kernel, ...),
        as text with the VM's own host paths made neutral; after prepare.

        Raises:
            StateError: before prepare.
        """

    async def save_state(self, path: str, timeout: float = 30.0) -> None:
        """Stop the vCPUs, write the device state (not the RAM) to ``path``, then stop the VM.

        Raises:
            StateError: the VM is not running or paused, or has no shared memory image.
            HypervisorError: the VMM refused or did not finish within ``timeout`` s (the VM is stopped).
        """


@runtime_checkable
class Adoptable(Protocol):
    """A driver that can take over a running VM another process started and handed over (the VM cache)."""

    async def adopt(self, processes: Sequence[tuple[int, int]], timeout: float = 10.0) -> None:
        """Take over the running VM of ``processes`` (pid, start time: VMM first, then helpers), started
        by another process from the same prepared shape, its host files now in this VM's workdir
        (after prepare; the VM is then running and stopped by :meth:`Hypervisor.stop`).

        Raises:
            StateError: unless prepared.
            HypervisorError: a process is gone or the VMM does not answer (the VM is stopped then).
        """

    async def detach(self) -> None:
        """Release the VMM and helpers without stopping them, for another process to adopt.

        Raises:
            StateError: the VM is not running or paused.
        """


def shared_fs_for(config: HypervisorConfig, paths: VmPaths, source: str,
                  tag: str = SHARED_FS_TAG) -> SharedFs | None:
    """The shared-dir device ``shared_fs`` asks for (None for ``none``)."""
    if config.shared_fs == "virtio-fs":
        return SharedFs(tag, source, "virtio-fs", str(paths.virtiofsd_socket))
    if config.shared_fs == "virtio-9p":
        return SharedFs(tag, source, "virtio-9p")
    return None


def with_standard_devices(paths: VmPaths, devices: Iterable[Device]) -> tuple[Device, ...]:
    """``devices`` plus a Console and a virtio-serial AgentChannel on the standard paths, unless given."""
    given = tuple(devices)
    extra: list[Device] = []
    if not any(isinstance(d, Console) for d in given):
        extra.append(Console(str(paths.console_log)))
    if not any(isinstance(d, AgentChannel) for d in given):
        extra.append(AgentChannel(str(paths.agent_socket)))
    return (*extra, *given)


class Hypervisor(abc.ABC):
    """One VM driven by one VMM. Async, host side; one owner (the sandbox daemon) calls it.

    Lifecycle (guarded; a wrong call raises :class:`kata.errors.StateError`)::

        new --prepare--> prepared --start--> running <--pause/resume--> paused
        running/paused --(VMM exits on its own)--> exited
        any --stop--> stopped     (a failed start also ends in stopped, leaving nothing behind)

    ``add_device`` before ``start`` cold-plugs, after it hotplugs.
    """

    name: ClassVar[str]

    def __init__(self, config: HypervisorConfig, workdir: Path, *, sandbox_id: str = "",
                 accelerator: str | None = None) -> None:
        self.config = config
        self.paths = VmPaths(Path(workdir))
        self.sandbox_id = sandbox_id
        self.accelerator = accelerator
        self._life = Lifecycle(f"vm {sandbox_id}".strip())
        self._callbacks: list[EventCallback] = []

    @property
    def state(self) -> VmState:
        """The lifecycle state."""
        return self._life.state

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback`` (in the event loop, must not block) for every VM event; returns unsubscribe."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def _emit(self, event: VmEvent) -> None:
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:  # a broken subscriber must not break the driver
                _log.exception("vm event callback failed", extra=fields(sandbox=self.sandbox_id,
                                                                         event=event.name))

    @property
    @abc.abstractmethod
    def agent(self) -> AgentChannel:
        """The agent channel (after prepare).

        Raises:
            StateError: before prepare.
        """

    @abc.abstractmethod
    async def prepare(self, devices: Sequence[Device] = ()) -> None:
        """Fix the VM's shape from the config and cold-plug ``devices`` (+ standard console/agent).

        Raises:
            StateError: unless new.
            HypervisorError: a device the machine type cannot take, or a bad configuration.
        """

    @abc.abstractmethod
    async def start(self, timeout: float = 30.0) -> None:
        """Launch the VMM (and helpers) and wait until it is controllable, within ``timeout`` s.

        Raises:
            StateError: unless prepared.
            HypervisorError: the VMM failed or was not ready in time; nothing is left behind.
        """

    @abc.abstractmethod
    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the VM: gracefully (VMM quit) for up to ``timeout`` s, then by force; release all.

        Idempotent; never raises for a VM that is already gone.
        """

    @abc.abstractmethod
    async def wait(self) -> int:
        """Wait for the VMM process to end; its exit status (negative: killed by that signal).

        Raises:
            StateError: before start.
        """

    @abc.abstractmethod
    async def pause(self) -> None:
        """Freeze the guest's vCPUs.

        Raises:
            StateError: unless running.
            HypervisorError: the VMM refused.
        """

    @abc.abstractmethod
    async def resume(self) -> None:
        """Unfreeze the guest's vCPUs.

        Raises:
            StateError: unless paused.
            HypervisorError: the VMM refused.
        """

    @abc.abstractmethod
    async def add_device(self, device: Device) -> None:
        """Cold-plug (prepared) or hotplug (running) ``device``.

        Raises:
            StateError: unless prepared or running.
            HypervisorError: the machine cannot take it, or the VMM refused (nothing is left half-added).
        """

    @abc.abstractmethod
    async def remove_device(self, device: Device, timeout: float = 10.0) -> None:
        """Undo :meth:`add_device`; when running, waits up to ``timeout`` s for the guest to let go.

        Raises:
            StateError: unless prepared or running.
            HypervisorError: unknown device, no hot-unplug here, or the guest did not release it.
        """

    @abc.abstractmethod
    async def resize_vcpus(self, count: int) -> int:
        """Hot(un)plug vCPUs towards ``count`` (1..max); returns the vCPU count now present.

        Raises:
            StateError: unless running.
            HypervisorError: no vCPU hotplug here, ``count`` out of range, or the VMM refused.
        """

    @abc.abstractmethod
    async def resize_memory(self, mib: int) -> int:
        """Hotplug memory so the guest has at least ``mib`` MiB; returns the MiB now present.

        Raises:
            StateError: unless running.
            HypervisorError: no memory hotplug here, shrinking asked, above the maximum, or refused.
        """

    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """What this driver can do with the configured machine."""

    @abc.abstractmethod
    def pids(self) -> tuple[int, ...]:
        """PIDs of the live host processes of this VM (VMM first, then helpers such as virtiofsd)."""

    @abc.abstractmethod
    async def check(self) -> None:
        """Probe the VMM: it answers and the guest is running or paused.

        Raises:
            StateError: before start or after stop.
            HypervisorError: the VMM exited or does not answer.
        """

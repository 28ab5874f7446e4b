"""A small typed wrapper over qemu.qmp: the QMP commands pykata uses, errors as HypervisorError."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError, Runstate

from kata.errors import HypervisorError

__all__ = [
    "VM_EVENTS",
    "CpuInfo",
    "EventStream",
    "HotpluggableCpu",
    "QmpClient",
    "QmpError",
    "QmpEvent",
    "QmpStatus",
]

_log = logging.getLogger("kata.hypervisor.qmp")
VM_EVENTS = ("SHUTDOWN", "GUEST_PANICKED", "DEVICE_DELETED", "STOP", "RESUME")


class QmpError(HypervisorError):
    """A QMP command failed or the monitor is unreachable; ``error_class`` is QEMU's (e.g. DeviceNotFound)."""

    def __init__(self, message: str, *, error_class: str | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class


@dataclass(frozen=True)
class QmpEvent:
    """One QMP event: name, data and QEMU's timestamp (seconds since the epoch)."""

    name: str
    data: Mapping[str, Any] = field(default_factory=dict)
    timestamp: float = 0.0

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> QmpEvent:
        """Translate a qemu.qmp event message."""
        stamp = message.get("timestamp") or {}
        seconds = float(stamp.get("seconds", 0)) + float(stamp.get("microseconds", 0)) / 1e6
        return cls(str(message["event"]), dict(message.get("data") or {}), seconds)


@dataclass(frozen=True)
class QmpStatus:
    """``query-status``: QEMU's run state (running, paused, shutdown, ...)."""

    status: str
    running: bool


@dataclass(frozen=True)
class CpuInfo:
    """One vCPU of ``query-cpus-fast``."""

    cpu_index: int
    qom_path: str
    thread_id: int
    props: Mapping[str, int]


@dataclass(frozen=True)
class HotpluggableCpu:
    """One slot of ``query-hotpluggable-cpus``; ``qom_path`` is set when a vCPU occupies it."""

    type: str
    vcpus_count: int
    props: Mapping[str, int]
    qom_path: str | None


class EventStream:
    """Events of the chosen names from the moment it is entered: ``with`` it, then iterate or ``get``."""

    def __init__(self, client: QMPClient, names: Iterable[str] | None) -> None:
        self._client = client
        self._listener = EventListener(tuple(names) if names is not None else None)

    def __enter__(self) -> EventStream:
        self._client.register_listener(self._listener)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._client.remove_listener(self._listener)

    async def get(self) -> QmpEvent:
        """The next event (waits)."""
        return QmpEvent.from_message(await self._listener.get())

    def __aiter__(self) -> AsyncIterator[QmpEvent]:
        return self

    async def __anext__(self) -> QmpEvent:
        return await self.get()


async def _dial(path: str) -> socket.socket | None:
    """A unix stream socket connected to ``path``, or None while nothing listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, path)
    except OSError:
        sock.close()
        return None
    return sock


def _qmp_error(what: str, exc: QMPError) -> QmpError:
    if isinstance(exc, ExecuteError):
        return QmpError(f"{what}: {exc.error_class}: {exc}", error_class=exc.error_class)
    return QmpError(f"{what}: {type(exc).__name__}: {exc}")


class QmpClient:
    """An async QMP connection to one QEMU. Every method raises :class:`QmpError` on failure."""

    def __init__(self, name: str = "pykata") -> None:
        self._client = QMPClient(name)
        self._callbacks: list[Callable[[QmpEvent], None]] = []
        self._dispatcher: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """Whether a QMP session is up."""
        return self._client.runstate is Runstate.RUNNING

    async def connect(self, path: str, *, alive: Callable[[], bool] = lambda: True,
                      interval: float = 0.01) -> None:
        """Connect to a QMP unix socket, retrying while ``alive()`` holds (bound it with a timeout).

        Raises:
            QmpError: ``alive()`` turned false before the monitor answered.
        """
        while True:
            if not alive():
                raise QmpError(f"qmp {path}: the process exited before its monitor answered")
            # Dial ourselves: qemu.qmp logs every failed connect at ERROR level.
            if (sock := await _dial(path)) is not None:
                try:
                    await self._client.connect(sock)
                    return
                except QMPError:
                    sock.close()
            await asyncio.sleep(interval)
            interval = min(interval * 2, 0.1)

    async def close(self) -> None:
        """Disconnect (idempotent; errors of a dead connection are ignored)."""
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
            self._dispatcher = None
        with contextlib.suppress(QMPError, OSError, EOFError):
            await self._client.disconnect()

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        """Run one command; its ``return`` value.

        Raises:
            QmpError: QEMU answered an error (``error_class`` set) or the connection is gone.
        """
        try:
            return await self._client.execute(command, arguments)
        except QMPError as exc:
            raise _qmp_error(f"qmp {command}", exc) from exc

    def listen(self, *names: str) -> EventStream:
        """An :class:`EventStream` of the named events (all events when none is named)."""
        return EventStream(self._client, names or None)

    def on_event(self, callback: Callable[[QmpEvent], None]) -> Callable[[], None]:
        """Call ``callback`` (in the loop, must not block) for each event from now on; returns unsubscribe."""
        self._callbacks.append(callback)
        if self._dispatcher is None:
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch(), name="qmp-events")
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    async def _dispatch(self) -> None:
        with self.listen() as events:
            async for event in events:
                for callback in list(self._callbacks):
                    try:
                        callback(event)
                    except Exception:  # one bad subscriber must not silence the others
                        _log.exception("qmp event callback failed")

    async def query_status(self) -> QmpStatus:
        """``query-status``."""
        reply = await self.execute("query-status")
        return QmpStatus(str(reply["status"]), bool(reply["running"]))

    async def stop(self) -> None:
        """``stop``: pause the vCPUs."""
        await self.execute("stop")

    async def cont(self) -> None:
        """``cont``: resume the vCPUs."""
        await self.execute("cont")

    async def quit(self) -> None:
        """``quit``: QEMU exits (the connection drops right after; that is not an error)."""
        with contextlib.suppress(QmpError):
            await self.execute("quit")

    async def system_powerdown(self) -> None:
        """``system_powerdown``: ACPI power button (the guest decides what to do)."""
        await self.execute("system_powerdown")

    async def device_add(self, props: Mapping[str, object]) -> None:
        """``device_add`` with ``props`` (driver, id, bus, ...; None values dropped)."""
        await self.execute("device_add", {k: v for k, v in props.items() if v is not None})

    async def device_del(self, device_id: str, *, timeout: float = 10.0) -> None:
        """``device_del`` and wait for DEVICE_DELETED of ``device_id`` (the guest must release it).

        Raises:
            QmpError: QEMU refused, or no DEVICE_DELETED within ``timeout`` s.
        """
        with self.listen("DEVICE_DELETED") as events:
            await self.execute("device_del", {"id": device_id})
            try:
                async with asyncio.timeout(timeout):
                    while (await self._next(events)).data.get("device") != device_id:
                        pass
            except TimeoutError:
                raise QmpError(f"qmp device_del {device_id}: the guest did not release it within "
                               f"{timeout:g} s") from None

    async def _next(self, events: EventStream) -> QmpEvent:
        """The next event of ``events``; QmpError when the connection drops first (QEMU died)."""
        getter = asyncio.ensure_future(events.get())
        gone = asyncio.ensure_future(self._disconnected())
        try:
            await asyncio.wait({getter, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (getter, gone):
                task.cancel()
            await asyncio.gather(getter, gone, return_exceptions=True)
        if not getter.cancelled():
            return getter.result()
        raise QmpError("qmp: the connection to QEMU was lost")

    async def _disconnected(self) -> None:
        while self._client.runstate is Runstate.RUNNING:
            await self._client.runstate_changed()

    async def blockdev_add(self, props: Mapping[str, object]) -> None:
        """``blockdev-add`` (nested options as for -blockdev)."""
        await self.execute("blockdev-add", props)

    async def blockdev_del(self, node_name: str) -> None:
        """``blockdev-del``."""
        await self.execute("blockdev-del", {"node-name": node_name})

    async def chardev_add_unix(self, chardev_id: str, path: str, *, server: bool = False) -> None:
        """``chardev-add`` of a unix socket chardev (client, or a non-waiting server)."""
        data: dict[str, object] = {"addr": {"type": "unix", "data": {"path": path}}, "server": server}
        if server:
            data["wait"] = False
        await self.execute("chardev-add", {"id": chardev_id, "backend": {"type": "socket", "data": data}})

    async def chardev_remove(self, chardev_id: str) -> None:
        """``chardev-remove``."""
        await self.execute("chardev-remove", {"id": chardev_id})

    async def getfd(self, name: str, fd: int) -> None:
        """Pass ``fd`` over the socket (SCM_RIGHTS) and name it with ``getfd``.

        Raises:
            QmpError: the monitor is not on a unix socket, or QEMU refused.
        """
        try:
            self._client.send_fd_scm(fd)
        except QMPError as exc:
            raise _qmp_error(f"qmp getfd {name}", exc) from exc
        await self.execute("getfd", {"fdname": name})

    async def closefd(self, name: str) -> None:
        """``closefd``: drop a descriptor passed with :meth:`getfd` (if QEMU still holds it)."""
        await self.execute("closefd", {"fdname": name})

    async def add_fd(self, fd: int, fdset_id: int | None = None) -> tuple[int, int]:
        """Pass ``fd`` into an fd set (``add-fd``); returns (fdset id, fd number inside QEMU)."""
        try:
            self._client.send_fd_scm(fd)
        except QMPError as exc:
            raise _qmp_error("qmp add-fd", exc) from exc
        reply = await self.execute("add-fd", {} if fdset_id is None else {"fdset-id": fdset_id})
        return int(reply["fdset-id"]), int(reply["fd"])

    async def remove_fd(self, fdset_id: int) -> None:
        """``remove-fd`` of a whole fd set."""
        await self.execute("remove-fd", {"fdset-id": fdset_id})

    async def netdev_add(self, props: Mapping[str, object]) -> None:
        """``netdev_add`` (type, id, fds/ifname, ...)."""
        await self.execute("netdev_add", props)

    async def netdev_del(self, netdev_id: str) -> None:
        """``netdev_del``."""
        await self.execute("netdev_del", {"id": netdev_id})

    async def object_add(self, props: Mapping[str, object]) -> None:
        """``object-add`` (qom-type, id, properties)."""
        await self.execute("object-add", props)

    async def object_del(self, object_id: str) -> None:
        """``object-del``."""
        await self.execute("object-del", {"id": object_id})

    async def query_cpus_fast(self) -> list[CpuInfo]:
        """``query-cpus-fast``: the vCPUs present."""
        reply = await self.execute("query-cpus-fast")
        return [CpuInfo(int(c["cpu-index"]), str(c["qom-path"]), int(c["thread-id"]),
                        dict(c.get("props", {}))) for c in reply]

    async def query_hotpluggable_cpus(self) -> list[HotpluggableCpu]:
        """``query-hotpluggable-cpus``: every vCPU slot, occupied or not."""
        reply = await self.execute("query-hotpluggable-cpus")
        return [HotpluggableCpu(str(c["type"]), int(c["vcpus-count"]), dict(c["props"]), c.get("qom-path"))
                for c in reply]

    async def hotplug_vcpu(self, slot: HotpluggableCpu, device_id: str) -> None:
        """``device_add`` of a vCPU into a free slot of :meth:`query_hotpluggable_cpus`."""
        await self.device_add({"driver": slot.type, "id": device_id, **slot.props})

    async def hotplug_memory(self, dimm_id: str, backend: Mapping[str, object]) -> None:
        """``object-add`` a memory backend (``backend`` without id) then ``device_add`` a pc-dimm on it.

        Raises:
            QmpError: either step failed (the backend is removed again when the dimm fails).
        """
        memdev = f"mem-{dimm_id}"
        await self.object_add({**backend, "id": memdev})
        try:
            await self.device_add({"driver": "pc-dimm", "id": dimm_id, "memdev": memdev})
        except QmpError:
            with contextlib.suppress(QmpError):
                await self.object_del(memdev)
            raise

    async def migrate_set_capability(self, name: str, state: bool = True) -> None:
        """``migrate-set-capabilities`` of one capability (e.g. ``x-ignore-shared``)."""
        await self.execute("migrate-set-capabilities", {"capabilities": [{"capability": name, "state": state}]})

    async def migrate(self, uri: str) -> None:
        """``migrate`` to ``uri`` (returns at once; see :meth:`wait_migration`)."""
        await self.execute("migrate", {"uri": uri})

    async def migrate_incoming(self, uri: str) -> None:
        """``migrate-incoming`` from ``uri`` (QEMU started with ``-incoming defer``; see :meth:`wait_migration`)."""
        await self.execute("migrate-incoming", {"uri": uri})

    async def wait_migration(self, interval: float = 0.005) -> None:
        """Poll ``query-migrate`` until the migration completed (bound it with a timeout).

        Raises:
            QmpError: it failed or was cancelled (QEMU's error description in the message).
        """
        while True:
            reply = await self.execute("query-migrate")
            status = str(reply.get("status", "none"))
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise QmpError(f"qmp migration {status}: {reply.get('error-desc', 'no reason given')}")
            await asyncio.sleep(interval)
            interval = min(interval * 2, 0.05)

    async def query_memory_mib(self) -> int:
        """Base memory + plugged memory devices (pc-dimms and virtio-pmem), MiB (``query-memory-size-summary``)."""
        reply = await self.execute("query-memory-size-summary")
        return (int(reply["base-memory"]) + int(reply.get("plugged-memory", 0))) // (1 << 20)

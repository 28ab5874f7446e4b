"""Device hotplug on a running QEMU over QMP: each add rolls back fully on failure, each remove in order."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

from kata.errors import HypervisorError
from kata.hypervisor.devices import BlockDevice, Device, NetDevice, SharedFs
from kata.hypervisor.qemu.args import root_port_id
from kata.hypervisor.qemu.qdev import (
    Machine,
    block_device_props,
    blockdev_props,
    chardev_id,
    fs_device_props,
    net_device_props,
    node_name,
)
from kata.hypervisor.qemu.qmp import QmpClient, QmpError

__all__ = ["DeviceManager", "PortPool", "hotplug_support"]

_log = logging.getLogger("kata.hypervisor.qemu")

FsLauncher = Callable[[SharedFs], Awaitable[Callable[[], Awaitable[object]]]]


def hotplug_support(device: Device, machine: Machine) -> str | None:
    """Why ``device`` cannot be hotplugged on ``machine``, or None when it can."""
    if isinstance(device, BlockDevice):
        if machine == "q35" or device.driver == "virtio-scsi":
            return None
        return "microvm has no PCI hotplug (virtio-scsi disks can be hotplugged)"
    if isinstance(device, NetDevice | SharedFs) and machine != "q35":
        return "microvm has no PCI hotplug"
    if isinstance(device, SharedFs) and device.kind != "virtio-fs":
        return "virtio-9p cannot be hotplugged (QEMU has no QMP fsdev_add)"
    if isinstance(device, NetDevice | SharedFs):
        return None
    return f"{type(device).__name__} can only be cold-plugged"


class PortPool:
    """The empty pcie-root-ports of a q35 VM, lent to hotplugged PCI devices."""

    def __init__(self, count: int) -> None:
        self._free = [root_port_id(i) for i in range(count)]

    def take(self) -> str:
        """A free port id.

        Raises:
            HypervisorError: all are in use.
        """
        if not self._free:
            raise HypervisorError("no free pcie-root-port for hotplug")
        return self._free.pop(0)

    def give(self, port: str) -> None:
        """Return a port."""
        self._free.insert(0, port)


@dataclass
class _Plugged:
    device: Device
    bus: str | None
    undo_backend: AsyncExitStack  # what to tear down once the guest has released the device


class DeviceManager:
    """Hotplugged devices of one running VM."""

    def __init__(self, qmp: QmpClient, machine: Machine, ports: PortPool, start_fs: FsLauncher) -> None:
        self._qmp = qmp
        self._machine = machine
        self._ports = ports
        self._start_fs = start_fs
        self._plugged: dict[str, _Plugged] = {}

    def __contains__(self, device_id: str) -> bool:
        return device_id in self._plugged

    async def add(self, device: Device) -> None:
        """Hotplug ``device``.

        Raises:
            HypervisorError: not hotpluggable here, the id is taken, or QEMU refused (rolled back).
        """
        if (why := hotplug_support(device, self._machine)) is not None:
            raise HypervisorError(f"hotplug {device.id}: {why}")
        if device.id in self._plugged:
            raise HypervisorError(f"hotplug {device.id}: a device with this id is already plugged")
        async with AsyncExitStack() as undo:
            bus = None
            if not (isinstance(device, BlockDevice) and device.driver == "virtio-scsi"):
                bus = self._ports.take()
                undo.callback(self._ports.give, bus)
            backend = AsyncExitStack()
            undo.push_async_callback(backend.aclose)
            await self._add_backend(device, backend)
            await self._qmp.device_add(self._device_props(device, bus))
            undo.pop_all()
        self._plugged[device.id] = _Plugged(device, bus, backend)

    def _device_props(self, device: Device, bus: str | None) -> dict[str, object]:
        if isinstance(device, BlockDevice):
            return block_device_props(device, self._machine, bus)
        if isinstance(device, NetDevice):
            return net_device_props(device, self._machine, bus)
        assert isinstance(device, SharedFs)
        return fs_device_props(device, self._machine, bus)

    async def _add_backend(self, device: Device, backend: AsyncExitStack) -> None:
        if isinstance(device, BlockDevice):
            await self._qmp.blockdev_add(blockdev_props(device.path, device.id, device.read_only))
            backend.push_async_callback(_quietly, self._qmp.blockdev_del, node_name(device.id))
        elif isinstance(device, NetDevice):
            await self._add_netdev(device, backend)
        elif isinstance(device, SharedFs):
            backend.push_async_callback(await self._start_fs(device))
            await self._qmp.chardev_add_unix(chardev_id(device.id), device.socket_path)
            backend.push_async_callback(_quietly, self._qmp.chardev_remove, chardev_id(device.id))

    async def _add_netdev(self, net: NetDevice, backend: AsyncExitStack) -> None:
        props: dict[str, object] = {"type": "tap", "id": f"net-{net.id}"}
        if net.tap_fds:
            names = [f"fd-{net.id}-{i}" for i in range(len(net.tap_fds))]
            async with AsyncExitStack() as passed:
                for name, fd in zip(names, net.tap_fds, strict=True):
                    await self._qmp.getfd(name, fd)
                    passed.push_async_callback(_quietly, self._qmp.closefd, name)
                props["fds" if len(names) > 1 else "fd"] = ":".join(names)
                await self._qmp.netdev_add(props)
                passed.pop_all()  # the netdev owns the descriptors now
        else:
            props.update(ifname=net.tap_name, script="no", downscript="no")
            if net.queues > 1:
                props["queues"] = net.queues
            await self._qmp.netdev_add(props)
        backend.push_async_callback(_quietly, self._qmp.netdev_del, f"net-{net.id}")

    async def remove(self, device: Device, timeout: float) -> None:
        """Hot-unplug ``device`` (the guest must release it within ``timeout`` s), then its backend.

        Raises:
            HypervisorError: it was not hotplugged, or the guest kept it (it stays registered).
        """
        plugged = self._plugged.get(device.id)
        if plugged is None:
            raise HypervisorError(f"hot-unplug {device.id}: not a hotplugged device "
                                  "(cold-plugged devices stay until the VM stops)")
        await self._qmp.device_del(device.id, timeout=timeout)
        del self._plugged[device.id]
        await plugged.undo_backend.aclose()
        if plugged.bus is not None:
            self._ports.give(plugged.bus)


async def _quietly(step: Callable[[str], Awaitable[None]], name: str) -> None:
    # Rollback and teardown steps must not mask the error that triggered them.
    try:
        await step(name)
    except QmpError as exc:
        _log.warning("could not undo %s: %s", name, exc)

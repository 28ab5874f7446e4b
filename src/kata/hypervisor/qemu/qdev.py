"""Pure translation of device descriptions into QEMU properties, shared by argv (cold) and QMP (hot)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from kata.errors import HypervisorError
from kata.hypervisor.devices import AgentChannel, BlockDevice, NetDevice, RootfsImage, SharedFs

__all__ = [
    "SCSI_CONTROLLER_ID",
    "SERIAL_CONTROLLER_ID",
    "Machine",
    "Props",
    "agent_device_props",
    "block_device_props",
    "blockdev_props",
    "chardev_id",
    "fs_device_props",
    "keyval",
    "net_device_props",
    "node_name",
    "pmem_backend_props",
    "pmem_device_props",
    "virtio_driver",
]

Machine = Literal["q35", "microvm"]
Props = dict[str, object]

SERIAL_CONTROLLER_ID = "serial0"
SCSI_CONTROLLER_ID = "scsi0"


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value).replace(",", ",,")  # QEMU's keyval escapes a comma by doubling it


def _flatten(props: Mapping[str, object], prefix: str = "") -> list[tuple[str, object]]:
    flat: list[tuple[str, object]] = []
    for key, value in props.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            flat.extend(_flatten(value, f"{prefix}{key}."))
        else:
            flat.append((f"{prefix}{key}", value))
    return flat


def keyval(props: Mapping[str, object], head: str | None = None) -> str:
    """Render properties as a QEMU option value: ``head`` first as a bare word, nested keys dotted.

    >>> keyval({"driver": "virtio-blk-pci", "id": "d0", "ro": True}, head="driver")
    'virtio-blk-pci,id=d0,ro=on'
    """
    parts: list[str] = []
    items = _flatten(props)
    if head is not None:
        parts.append(_value(props[head]))
        items = [(k, v) for k, v in items if k != head]
    parts.extend(f"{key}={_value(value)}" for key, value in items)
    return ",".join(parts)


def virtio_driver(base: str, machine: Machine) -> str:
    """The virtio transport a machine uses: ``-pci`` on q35, ``-device`` (virtio-mmio) on microvm."""
    return f"{base}-pci" if machine == "q35" else f"{base}-device"


def node_name(device_id: str) -> str:
    """Block node name of a disk."""
    return f"drive-{device_id}"


def chardev_id(device_id: str) -> str:
    """Chardev id of a device's host-side socket."""
    return f"char-{device_id}"


def blockdev_props(path: str, device_id: str, read_only: bool) -> Props:
    """``-blockdev``/``blockdev-add`` of a raw image; paths under /dev are host block devices."""
    driver = "host_device" if path.startswith("/dev/") else "file"
    return {"driver": "raw", "node-name": node_name(device_id), "read-only": read_only,
            "file": {"driver": driver, "filename": path}}


def block_device_props(device: BlockDevice | RootfsImage, machine: Machine, bus: str | None = None) -> Props:
    """``-device``/``device_add`` of a disk (virtio-blk, or scsi-hd on the virtio-scsi controller)."""
    if isinstance(device, BlockDevice) and device.driver == "virtio-scsi":
        return {"driver": "scsi-hd", "id": device.id, "bus": f"{SCSI_CONTROLLER_ID}.0",
                "drive": node_name(device.id)}
    # A rootfs image's serial is its id: the boot initrd finds the disk by it (kata.image.bootinitrd).
    serial = device.id if isinstance(device, RootfsImage) else None
    return {"driver": virtio_driver("virtio-blk", machine), "id": device.id, "drive": node_name(device.id),
            "bus": bus, "serial": serial}


def pmem_backend_props(image: RootfsImage) -> Props:
    """The memory-backend-file that maps a virtio-pmem image (read-only: private, never written)."""
    if image.size <= 0:
        raise HypervisorError(f"rootfs image {image.path}: virtio-pmem needs its size")
    return {"qom-type": "memory-backend-file", "id": f"mem-{image.id}", "mem-path": image.path,
            "size": image.size, "share": not image.read_only, "readonly": image.read_only}


def pmem_device_props(image: RootfsImage, bus: str | None = None) -> Props:
    """The virtio-pmem-pci device over :func:`pmem_backend_props` (PCI only: q35)."""
    return {"driver": "virtio-pmem-pci", "id": image.id, "memdev": f"mem-{image.id}", "bus": bus}


def fs_device_props(fs: SharedFs, machine: Machine, bus: str | None = None) -> Props:
    """vhost-user-fs (virtio-fs) or virtio-9p device of a shared directory."""
    if fs.kind == "virtio-fs":
        return {"driver": virtio_driver("vhost-user-fs", machine), "id": fs.id, "chardev": chardev_id(fs.id),
                "tag": fs.tag, "bus": bus}
    return {"driver": virtio_driver("virtio-9p", machine), "id": fs.id, "fsdev": f"fsdev-{fs.id}",
            "mount_tag": fs.tag, "bus": bus}


def net_device_props(net: NetDevice, machine: Machine, bus: str | None = None) -> Props:
    """virtio-net device on netdev ``net-<id>``; multiqueue gets 2 vectors per queue pair (+2)."""
    props: Props = {"driver": virtio_driver("virtio-net", machine), "id": net.id, "netdev": f"net-{net.id}",
                    "mac": net.mac, "host_mtu": net.mtu or None, "bus": bus}
    if net.queues > 1:
        props["mq"] = True
        if machine == "q35":
            props["vectors"] = 2 * net.queues + 2
    return props


def agent_device_props(agent: AgentChannel, machine: Machine) -> Props:
    """The agent's virtserialport (on the serial controller) or vhost-vsock device."""
    if agent.transport == "serial":
        return {"driver": "virtserialport", "id": agent.id, "bus": f"{SERIAL_CONTROLLER_ID}.0",
                "chardev": chardev_id(agent.id), "name": agent.name}
    return {"driver": virtio_driver("vhost-vsock", machine), "id": agent.id, "guest-cid": agent.vsock_cid}

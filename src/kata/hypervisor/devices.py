"""Typed, hypervisor-neutral device descriptions (frozen dataclasses; bad fields raise ValueError)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "AGENT_PORT_NAME",
    "VSOCK_AGENT_PORT",
    "AgentChannel",
    "BlockDevice",
    "Console",
    "Device",
    "NetDevice",
    "RootfsImage",
    "SharedFs",
]

AGENT_PORT_NAME = "agent.channel.0"
VSOCK_AGENT_PORT = 1024

BlockDriver = Literal["virtio-blk", "virtio-scsi"]
SharedFsKind = Literal["virtio-fs", "virtio-9p"]
RootfsKind = Literal["virtio-pmem", "virtio-blk"]


def _check_id(kind: str, device_id: str) -> None:
    # Ids become QEMU ids and node names: letters, digits, '-', '_', '.', starting with a letter.
    if not device_id or not device_id[0].isalpha() or not all(c.isalnum() or c in "-_." for c in device_id):
        raise ValueError(f"{kind}: bad device id {device_id!r}")


@dataclass(frozen=True)
class AgentChannel:
    """The agent's channel: a virtio-serial port on a host unix socket, or a vsock cid/port.

    Exactly one of ``socket_path`` (virtio-serial, port ``name``) and ``vsock_cid`` is set.
    """

    socket_path: str = ""
    name: str = AGENT_PORT_NAME
    vsock_cid: int = 0
    vsock_port: int = VSOCK_AGENT_PORT
    id: str = "agent"

    def __post_init__(self) -> None:
        _check_id("agent channel", self.id)
        if bool(self.socket_path) == bool(self.vsock_cid):
            raise ValueError("agent channel: give either socket_path or vsock_cid")
        if self.vsock_cid and self.vsock_cid < 3:
            raise ValueError(f"agent channel: vsock cid {self.vsock_cid} is reserved (must be >= 3)")

    @property
    def transport(self) -> Literal["serial", "vsock"]:
        """``serial`` or ``vsock``."""
        return "serial" if self.socket_path else "vsock"

    @property
    def address(self) -> str:
        """The agent address the host dials: ``unix://PATH`` or ``vsock://CID:PORT``."""
        if self.socket_path:
            return f"unix://{self.socket_path}"
        return f"vsock://{self.vsock_cid}:{self.vsock_port}"


@dataclass(frozen=True)
class SharedFs:
    """A host directory shared with the guest under ``tag``.

    virtio-fs needs ``socket_path``, the vhost-user socket of the virtiofsd serving ``source``;
    virtio-9p needs only ``source``.
    """

    tag: str
    source: str
    kind: SharedFsKind = "virtio-fs"
    socket_path: str = ""
    id: str = "fs0"

    def __post_init__(self) -> None:
        _check_id("shared fs", self.id)
        if not self.tag or len(self.tag) > 36:
            raise ValueError(f"shared fs: tag {self.tag!r} must have 1 to 36 characters")
        if self.kind == "virtio-fs" and not self.socket_path:
            raise ValueError("shared fs: virtio-fs needs the virtiofsd socket_path")


@dataclass(frozen=True)
class BlockDevice:
    """A raw disk image or host block device (paths under /dev are opened as host devices)."""

    path: str
    id: str
    read_only: bool = False
    driver: BlockDriver = "virtio-blk"

    def __post_init__(self) -> None:
        _check_id("block device", self.id)
        if not self.path:
            raise ValueError("block device: empty path")


@dataclass(frozen=True)
class NetDevice:
    """A virtio-net NIC on a tap: opened tap fds (one per queue) or a tap name QEMU opens."""

    id: str
    mac: str
    tap_fds: tuple[int, ...] = ()
    tap_name: str = ""
    mtu: int = 0
    queues: int = 1

    def __post_init__(self) -> None:
        _check_id("net device", self.id)
        if bool(self.tap_fds) == bool(self.tap_name):
            raise ValueError("net device: give either tap_fds or tap_name")
        if self.tap_fds and len(self.tap_fds) != self.queues:
            raise ValueError(f"net device: {len(self.tap_fds)} tap fds for {self.queues} queues")
        parts = self.mac.split(":")
        if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p)
                                      for p in parts):
            raise ValueError(f"net device: bad MAC address {self.mac!r}")


@dataclass(frozen=True)
class RootfsImage:
    """A guest rootfs image: virtio-pmem (DAX, read-only, q35 only) or virtio-blk.

    ``size`` (bytes) is the file size the pmem backend maps; 0 lets the driver fill it in.
    """

    path: str
    kind: RootfsKind = "virtio-pmem"
    read_only: bool = True
    size: int = 0
    id: str = "rootfs"

    def __post_init__(self) -> None:
        _check_id("rootfs image", self.id)
        if not self.path:
            raise ValueError("rootfs image: empty path")


@dataclass(frozen=True)
class Console:
    """The guest's serial console (ttyS0), written to a host log file."""

    log_path: str
    id: str = "console"

    def __post_init__(self) -> None:
        _check_id("console", self.id)


Device = AgentChannel | SharedFs | BlockDevice | NetDevice | RootfsImage | Console

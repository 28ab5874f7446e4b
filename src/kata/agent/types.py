"""Typed requests and answers of the guest agent; protobuf stays in kata.agent.trans."""

from __future__ import annotations

from dataclasses import dataclass

from kata.oci import Process, Spec

__all__ = [
    "ARPNeighbor",
    "AgentVersion",
    "ContainerRequest",
    "ExecRequest",
    "GuestDetails",
    "IPAddress",
    "Interface",
    "KernelModule",
    "Route",
    "SandboxRequest",
    "Storage",
]


@dataclass(frozen=True)
class Storage:
    """Something the agent mounts in the guest: driver ("virtio-fs", "9p", "blk", "ephemeral", "local")."""

    driver: str
    source: str
    fstype: str
    mount_point: str
    options: tuple[str, ...] = ()
    driver_options: tuple[str, ...] = ()
    shared: bool = False


@dataclass(frozen=True)
class KernelModule:
    """A guest kernel module to load, with its key=value parameters."""

    name: str
    parameters: tuple[str, ...] = ()


@dataclass(frozen=True)
class SandboxRequest:
    """CreateSandbox: the sandbox-wide facts of the guest."""

    sandbox_id: str
    hostname: str = ""
    dns: tuple[str, ...] = ()
    storages: tuple[Storage, ...] = ()
    sandbox_pidns: bool = False
    guest_hook_path: str = ""
    kernel_modules: tuple[KernelModule, ...] = ()


@dataclass(frozen=True)
class ContainerRequest:
    """CreateContainer: a container from its OCI spec, with the storages it needs first."""

    container_id: str
    exec_id: str
    spec: Spec
    storages: tuple[Storage, ...] = ()
    sandbox_pidns: bool = False


@dataclass(frozen=True)
class ExecRequest:
    """ExecProcess: another process in a running container."""

    container_id: str
    exec_id: str
    process: Process


@dataclass(frozen=True)
class GuestDetails:
    """What GetGuestDetails tells about the guest."""

    mem_block_size_bytes: int
    support_mem_hotplug_probe: bool
    agent_version: str


@dataclass(frozen=True)
class AgentVersion:
    """Health.Version: protocol and agent versions."""

    grpc_version: str
    agent_version: str


@dataclass(frozen=True)
class IPAddress:
    """An IPv4 or IPv6 address (the family follows from the text) with its prefix length, if any."""

    address: str
    prefix_length: int | None = None


@dataclass(frozen=True)
class Interface:
    """A guest NIC. UpdateInterface finds it by ``hw_addr`` and gives it ``name``, ``mtu`` (0 keeps it)
    and exactly ``addresses``; ``raw_flags`` is read for IFF_NOARP. Answers carry the kernel's view:
    ``link_type`` ("veth", "" for a plain NIC) and the IFF_* ``raw_flags``."""

    name: str
    hw_addr: str
    mtu: int = 0
    addresses: tuple[IPAddress, ...] = ()
    device_path: str = ""
    link_type: str = ""
    raw_flags: int = 0


@dataclass(frozen=True)
class Route:
    """A guest route: ``dest`` a CIDR network ("" for the default route), ``source`` the preferred
    source address, ``device`` the link's guest name; ``family`` 4 or 6 (an IPv6 address makes it 6)."""

    dest: str = ""
    gateway: str = ""
    device: str = ""
    source: str = ""
    scope: int = 0
    family: int = 4
    flags: int = 0
    mtu: int = 0


@dataclass(frozen=True)
class ARPNeighbor:
    """A static neighbour entry: ``address`` reached at ``lladdr`` on link ``device``; state 0 is permanent."""

    address: str
    device: str
    lladdr: str = ""
    state: int = 0
    flags: int = 0

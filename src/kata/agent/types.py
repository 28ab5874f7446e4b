"""Typed requests and answers of the guest agent; protobuf stays in kata.agent.trans."""

from __future__ import annotations

from dataclasses import dataclass

from kata.oci import Process, Spec

__all__ = [
    "AgentVersion",
    "ContainerRequest",
    "ExecRequest",
    "GuestDetails",
    "KernelModule",
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

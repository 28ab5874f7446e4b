"""Hypervisor layer: one interface, drivers behind it (QEMU first), accelerator selection."""

from __future__ import annotations

from kata.hypervisor.base import (
    SHARED_FS_TAG,
    Adoptable,
    Capabilities,
    EventCallback,
    Hypervisor,
    MemoryImage,
    Templatable,
    VmEvent,
    VmPaths,
    shared_fs_for,
    with_standard_devices,
)
from kata.hypervisor.devices import (
    AGENT_PORT_NAME,
    VSOCK_AGENT_PORT,
    AgentChannel,
    BlockDevice,
    Console,
    Device,
    NetDevice,
    RootfsImage,
    SharedFs,
)
from kata.hypervisor.registry import hypervisor_names, new_hypervisor, register_hypervisor
from kata.hypervisor.state import Lifecycle, VmState

__all__ = [
    "AGENT_PORT_NAME",
    "SHARED_FS_TAG",
    "VSOCK_AGENT_PORT",
    "Adoptable",
    "AgentChannel",
    "BlockDevice",
    "Capabilities",
    "Console",
    "Device",
    "EventCallback",
    "Hypervisor",
    "Lifecycle",
    "MemoryImage",
    "NetDevice",
    "RootfsImage",
    "SharedFs",
    "Templatable",
    "VmEvent",
    "VmPaths",
    "VmState",
    "hypervisor_names",
    "new_hypervisor",
    "register_hypervisor",
    "shared_fs_for",
    "with_standard_devices",
]

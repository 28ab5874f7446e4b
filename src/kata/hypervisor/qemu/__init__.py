"""The QEMU driver: pure argv builder (args, qdev), QMP wrapper (qmp), hotplug and the driver."""

from __future__ import annotations

from kata.hypervisor.qemu.args import MemoryBackend, VmSpec, build_argv, kernel_command_line
from kata.hypervisor.qemu.driver import QemuHypervisor
from kata.hypervisor.qemu.qmp import QmpClient, QmpError, QmpEvent

__all__ = [
    "MemoryBackend",
    "QemuHypervisor",
    "QmpClient",
    "QmpError",
    "QmpEvent",
    "VmSpec",
    "build_argv",
    "kernel_command_line",
]

"""The in-guest container runtime: namespaces, rootfs, cgroups and stdio of containers, runc-style."""

from __future__ import annotations

from kata.guest.runtime.container import ContainerInfo, ProcessInfo
from kata.guest.runtime.errors import (
    CgroupError,
    ContainerExistsError,
    ContainerNotFoundError,
    ExecError,
    PathEscapeError,
    ProcessExistsError,
    ProcessNotFoundError,
    RemoveTimeoutError,
    RuntimeClosedError,
    SetupError,
    TerminalError,
    UnsupportedError,
)
from kata.guest.runtime.runtime import DEFAULT_CGROUP_ROOT, ContainerRuntime
from kata.guest.runtime.state import ContainerState, ProcessState
from kata.guest.runtime.stats import (
    CgroupStats,
    ContainerStats,
    CpuStats,
    HugetlbStats,
    InterfaceStats,
    IoDeviceStats,
    MemoryStats,
    PidsStats,
)
from kata.guest.runtime.watch import ChildWatcher, ThreadWatcher

__all__ = [
    "DEFAULT_CGROUP_ROOT",
    "CgroupError",
    "CgroupStats",
    "ChildWatcher",
    "ContainerExistsError",
    "ContainerInfo",
    "ContainerNotFoundError",
    "ContainerRuntime",
    "ContainerState",
    "ContainerStats",
    "CpuStats",
    "ExecError",
    "HugetlbStats",
    "InterfaceStats",
    "IoDeviceStats",
    "MemoryStats",
    "PathEscapeError",
    "PidsStats",
    "ProcessExistsError",
    "ProcessInfo",
    "ProcessNotFoundError",
    "ProcessState",
    "RemoveTimeoutError",
    "RuntimeClosedError",
    "SetupError",
    "TerminalError",
    "ThreadWatcher",
    "UnsupportedError",
]

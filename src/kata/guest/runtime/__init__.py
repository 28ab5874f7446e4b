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
from kata.guest.runtime.watch import ChildWatcher, ThreadWatcher

TYPE_CHECKING = False
if TYPE_CHECKING:
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

# The statistics types are loaded on first use: only StatsContainer needs them, and every class
# costs at boot in the guest.
_STATS = frozenset({"CgroupStats", "ContainerStats", "CpuStats", "HugetlbStats", "InterfaceStats",
                    "IoDeviceStats", "MemoryStats", "PidsStats"})

if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """Import kata.guest.runtime.stats when one of its types is first asked for."""
        if name not in _STATS:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from kata.guest.runtime import stats

        value = getattr(stats, name)
        globals()[name] = value
        return value

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

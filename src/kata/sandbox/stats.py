"""A container's resource usage as a typed record (the agent's raw answer is kept for the shim)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ContainerStats", "stats_from_agent"]


@dataclass(frozen=True)
class ContainerStats:
    """CPU, memory and pids of a container's cgroup in the guest.

    ``raw`` is the agent's StatsContainer answer as it came (the shim forwards it as cgroup metrics).
    """

    cpu_usage_ns: int
    cpu_user_ns: int
    cpu_system_ns: int
    memory_usage_bytes: int
    memory_max_usage_bytes: int
    memory_limit_bytes: int
    pids_current: int
    pids_limit: int
    raw: object = None


def stats_from_agent(answer: Any) -> ContainerStats:
    """The typed view of a StatsContainer answer (read by field name; no protobuf import here)."""
    cgroup = answer.cgroup_stats
    cpu, memory, pids = cgroup.cpu_stats.cpu_usage, cgroup.memory_stats.usage, cgroup.pids_stats
    return ContainerStats(
        cpu_usage_ns=int(cpu.total_usage), cpu_user_ns=int(cpu.usage_in_usermode),
        cpu_system_ns=int(cpu.usage_in_kernelmode), memory_usage_bytes=int(memory.usage),
        memory_max_usage_bytes=int(memory.max_usage), memory_limit_bytes=int(memory.limit),
        pids_current=int(pids.current), pids_limit=int(pids.limit), raw=answer)

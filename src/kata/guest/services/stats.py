"""Translate the runtime's typed container statistics into Kata's StatsContainerResponse."""

from __future__ import annotations

from kata.protocols.pb import agent_pb2

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kata.guest.runtime.stats import CgroupStats, ContainerStats

__all__ = ["stats_to_pb"]

UNLIMITED = 2**64 - 1  # what cgroup v1 reports as "no limit"; Kata's consumers expect it


def _limit(value: int | None) -> int:
    return UNLIMITED if value is None else value


def _cgroup_to_pb(stats: CgroupStats) -> agent_pb2.CgroupStats:
    out = agent_pb2.CgroupStats()
    if stats.cpu is not None:
        cpu = stats.cpu
        out.cpu_stats.cpu_usage.total_usage = cpu.usage_ns
        out.cpu_stats.cpu_usage.usage_in_usermode = cpu.user_ns
        out.cpu_stats.cpu_usage.usage_in_kernelmode = cpu.system_ns
        out.cpu_stats.throttling_data.periods = cpu.periods
        out.cpu_stats.throttling_data.throttled_periods = cpu.throttled_periods
        out.cpu_stats.throttling_data.throttled_time = cpu.throttled_ns
    if stats.memory is not None:
        memory = stats.memory
        out.memory_stats.cache = memory.stat.get("file", 0)
        out.memory_stats.usage.usage = memory.usage
        out.memory_stats.usage.limit = _limit(memory.limit)
        out.memory_stats.usage.max_usage = memory.max_usage or 0
        out.memory_stats.usage.failcnt = memory.events.get("max", 0)
        out.memory_stats.swap_usage.usage = memory.swap_usage or 0
        out.memory_stats.use_hierarchy = True
        out.memory_stats.stats.update({k: v for k, v in memory.stat.items() if v >= 0})
    if stats.pids is not None:
        out.pids_stats.current = stats.pids.current
        out.pids_stats.limit = stats.pids.limit or 0
    for device in stats.io:
        for op, value in (("Read", device.read_bytes), ("Write", device.write_bytes)):
            out.blkio_stats.io_service_bytes_recursive.add(major=device.major, minor=device.minor, op=op,
                                                           value=value)
        for op, value in (("Read", device.read_ios), ("Write", device.write_ios)):
            out.blkio_stats.io_serviced_recursive.add(major=device.major, minor=device.minor, op=op,
                                                      value=value)
    for page in stats.hugetlb:
        out.hugetlb_stats[page.page_size].usage = page.usage
        out.hugetlb_stats[page.page_size].failcnt = page.failcnt
    return out


def stats_to_pb(stats: ContainerStats) -> agent_pb2.StatsContainerResponse:
    """StatsContainerResponse from the runtime's ContainerStats."""
    answer = agent_pb2.StatsContainerResponse()
    if stats.cgroup is not None:
        answer.cgroup_stats.CopyFrom(_cgroup_to_pb(stats.cgroup))
    for nic in stats.network:
        answer.network_stats.add(name=nic.name, rx_bytes=nic.rx_bytes, rx_packets=nic.rx_packets,
                                 rx_errors=nic.rx_errors, rx_dropped=nic.rx_dropped, tx_bytes=nic.tx_bytes,
                                 tx_packets=nic.tx_packets, tx_errors=nic.tx_errors,
                                 tx_dropped=nic.tx_dropped)
    return answer

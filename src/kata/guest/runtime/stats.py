"""Typed container statistics, read from cgroup v2 files and /proc/<pid>/net/dev (loaded on first use)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from kata.guest.runtime.cgroups import parse_flat_keyed, parse_max

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kata.guest.runtime.cgroups import Cgroup

__all__ = [
    "CgroupStats",
    "ContainerStats",
    "CpuStats",
    "HugetlbStats",
    "InterfaceStats",
    "IoDeviceStats",
    "MemoryStats",
    "PidsStats",
    "parse_io_stat",
    "parse_net_dev",
    "read_cgroup_stats",
]


@dataclass(frozen=True)
class MemoryStats:
    """memory.* of the container's cgroup, in bytes; ``limit`` None means no limit ("max")."""

    usage: int
    limit: int | None
    max_usage: int | None  # memory.peak (Linux 5.19+)
    swap_usage: int | None
    stat: Mapping[str, int] = field(default_factory=dict)  # memory.stat
    events: Mapping[str, int] = field(default_factory=dict)  # memory.events: low high max oom oom_kill


@dataclass(frozen=True)
class CpuStats:
    """cpu.stat, converted to nanoseconds like runc does."""

    usage_ns: int
    user_ns: int
    system_ns: int
    periods: int
    throttled_periods: int
    throttled_ns: int


@dataclass(frozen=True)
class PidsStats:
    """pids.current and pids.max (None: no limit)."""

    current: int
    limit: int | None


@dataclass(frozen=True)
class IoDeviceStats:
    """One device line of io.stat."""

    major: int
    minor: int
    read_bytes: int
    write_bytes: int
    read_ios: int
    write_ios: int


@dataclass(frozen=True)
class HugetlbStats:
    """hugetlb.<size>.current/.max/.events (``failcnt`` is the "max" event count)."""

    page_size: str
    usage: int
    limit: int | None
    failcnt: int


@dataclass(frozen=True)
class CgroupStats:
    """Whatever the container cgroup's enabled controllers report (None: controller not enabled)."""

    memory: MemoryStats | None
    cpu: CpuStats | None
    pids: PidsStats | None
    io: tuple[IoDeviceStats, ...] = ()
    hugetlb: tuple[HugetlbStats, ...] = ()


@dataclass(frozen=True)
class InterfaceStats:
    """One interface of /proc/<pid>/net/dev (the network namespace the container uses)."""

    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


@dataclass(frozen=True)
class ContainerStats:
    """StatsContainer's answer: cgroup statistics (None without a cgroup) and network counters."""

    cgroup: CgroupStats | None
    network: tuple[InterfaceStats, ...] = ()


def parse_io_stat(text: str) -> tuple[IoDeviceStats, ...]:
    """io.stat: "MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=.." lines."""
    devices = []
    for line in text.splitlines():
        device, *pairs = line.split()
        major, _, minor = device.partition(":")
        fields = {k: int(v) for k, _, v in (pair.partition("=") for pair in pairs) if v.isdigit()}
        devices.append(IoDeviceStats(
            major=int(major), minor=int(minor), read_bytes=fields.get("rbytes", 0),
            write_bytes=fields.get("wbytes", 0), read_ios=fields.get("rios", 0),
            write_ios=fields.get("wios", 0),
        ))
    return tuple(devices)


def parse_net_dev(text: str) -> tuple[InterfaceStats, ...]:
    """/proc/net/dev: two header lines, then "name: rx(8 fields) tx(8 fields)" per interface."""
    interfaces = []
    for line in text.splitlines()[2:]:
        name, _, counters = line.partition(":")
        values = [int(v) for v in counters.split()]
        if len(values) < 12:
            continue
        interfaces.append(InterfaceStats(
            name=name.strip(), rx_bytes=values[0], rx_packets=values[1], rx_errors=values[2],
            rx_dropped=values[3], tx_bytes=values[8], tx_packets=values[9], tx_errors=values[10],
            tx_dropped=values[11],
        ))
    return tuple(interfaces)


def read_cgroup_stats(cgroup: Cgroup) -> CgroupStats:
    """Everything the cgroup's enabled controllers report.

    Raises:
        CgroupError: when a file exists but cannot be read.
    """
    return CgroupStats(memory=_memory(cgroup), cpu=_cpu(cgroup), pids=_pids(cgroup),
                       io=parse_io_stat(cgroup.read("io.stat") or ""), hugetlb=_hugetlb(cgroup))


def _memory(cgroup: Cgroup) -> MemoryStats | None:
    current = cgroup.read("memory.current")
    if current is None:
        return None
    peak, swap = cgroup.read("memory.peak"), cgroup.read("memory.swap.current")
    return MemoryStats(
        usage=int(current), limit=parse_max(cgroup.read("memory.max") or "max"),
        max_usage=None if peak is None else int(peak), swap_usage=None if swap is None else int(swap),
        stat=parse_flat_keyed(cgroup.read("memory.stat") or ""),
        events=parse_flat_keyed(cgroup.read("memory.events") or ""),
    )


def _cpu(cgroup: Cgroup) -> CpuStats | None:
    text = cgroup.read("cpu.stat")
    if text is None:
        return None
    values = parse_flat_keyed(text)
    return CpuStats(
        usage_ns=values.get("usage_usec", 0) * 1000, user_ns=values.get("user_usec", 0) * 1000,
        system_ns=values.get("system_usec", 0) * 1000, periods=values.get("nr_periods", 0),
        throttled_periods=values.get("nr_throttled", 0), throttled_ns=values.get("throttled_usec", 0) * 1000,
    )


def _pids(cgroup: Cgroup) -> PidsStats | None:
    current = cgroup.read("pids.current")
    if current is None:
        return None
    return PidsStats(current=int(current), limit=parse_max(cgroup.read("pids.max") or "max"))


def _hugetlb(cgroup: Cgroup) -> tuple[HugetlbStats, ...]:
    sizes = sorted(name.split(".")[1] for name in os.listdir(cgroup.path)
                   if name.startswith("hugetlb.") and name.endswith(".current"))
    stats = []
    for size in sizes:
        events = parse_flat_keyed(cgroup.read(f"hugetlb.{size}.events") or "")
        stats.append(HugetlbStats(
            page_size=size, usage=int(cgroup.read(f"hugetlb.{size}.current") or 0),
            limit=parse_max(cgroup.read(f"hugetlb.{size}.max") or "max"), failcnt=events.get("max", 0),
        ))
    return tuple(stats)

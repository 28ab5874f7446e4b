"""Typed container statistics and the parsers of cgroup v2 files and /proc/<pid>/net/dev."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "CgroupStats",
    "ContainerStats",
    "CpuStats",
    "HugetlbStats",
    "InterfaceStats",
    "IoDeviceStats",
    "MemoryStats",
    "PidsStats",
    "parse_flat_keyed",
    "parse_io_stat",
    "parse_max",
    "parse_net_dev",
]


@dataclass(frozen=True, slots=True)
class MemoryStats:
    """memory.* of the container's cgroup, in bytes; ``limit`` None means no limit ("max")."""

    usage: int
    limit: int | None
    max_usage: int | None  # memory.peak (Linux 5.19+)
    swap_usage: int | None
    stat: Mapping[str, int] = field(default_factory=dict)  # memory.stat
    events: Mapping[str, int] = field(default_factory=dict)  # memory.events: low high max oom oom_kill


@dataclass(frozen=True, slots=True)
class CpuStats:
    """cpu.stat, converted to nanoseconds like runc does."""

    usage_ns: int
    user_ns: int
    system_ns: int
    periods: int
    throttled_periods: int
    throttled_ns: int


@dataclass(frozen=True, slots=True)
class PidsStats:
    """pids.current and pids.max (None: no limit)."""

    current: int
    limit: int | None


@dataclass(frozen=True, slots=True)
class IoDeviceStats:
    """One device line of io.stat."""

    major: int
    minor: int
    read_bytes: int
    write_bytes: int
    read_ios: int
    write_ios: int


@dataclass(frozen=True, slots=True)
class HugetlbStats:
    """hugetlb.<size>.current/.max/.events (``failcnt`` is the "max" event count)."""

    page_size: str
    usage: int
    limit: int | None
    failcnt: int


@dataclass(frozen=True, slots=True)
class CgroupStats:
    """Whatever the container cgroup's enabled controllers report (None: controller not enabled)."""

    memory: MemoryStats | None
    cpu: CpuStats | None
    pids: PidsStats | None
    io: tuple[IoDeviceStats, ...] = ()
    hugetlb: tuple[HugetlbStats, ...] = ()


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class ContainerStats:
    """StatsContainer's answer: cgroup statistics (None without a cgroup) and network counters."""

    cgroup: CgroupStats | None
    network: tuple[InterfaceStats, ...] = ()


def parse_flat_keyed(text: str) -> dict[str, int]:
    """"key value" lines (memory.stat, memory.events, cpu.stat) as a dict; other lines are skipped."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value)
    return values


def parse_max(text: str) -> int | None:
    """A limit file ("max" or a number) as an int, None for "max"."""
    text = text.strip()
    return None if text in ("max", "") else int(text.split()[0])


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

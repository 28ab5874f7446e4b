"""Cgroup resource limits of a Linux container (runtime-spec ``linux.resources``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kata.oci.ints import I64, U16, U32, U64

__all__ = [
    "CPU",
    "BlockIO",
    "DeviceCgroup",
    "HugepageLimit",
    "InterfacePriority",
    "Memory",
    "Network",
    "Pids",
    "Rdma",
    "Resources",
    "ThrottleDevice",
    "WeightDevice",
]

# Fields typed ``X | None`` are pointers in Go's runtime-spec: None means "not set", which is not the
# same as zero (a swappiness of 0 is a setting). Empty tuples and mappings mean "none given".


@dataclass(frozen=True, kw_only=True)
class DeviceCgroup:
    """One device cgroup rule; ``type`` "" and ``major``/``minor`` None mean "all"."""

    allow: bool
    type: str = ""
    major: I64 | None = None
    minor: I64 | None = None
    access: str = ""


@dataclass(frozen=True, kw_only=True)
class Memory:
    """Memory cgroup limits in bytes; ``swap`` is memory plus swap, -1 means unlimited."""

    limit: I64 | None = None
    reservation: I64 | None = None
    swap: I64 | None = None
    kernel: I64 | None = None
    kernel_tcp: I64 | None = None
    swappiness: U64 | None = None
    disable_oom_killer: bool | None = None
    use_hierarchy: bool | None = None
    check_before_update: bool | None = None


@dataclass(frozen=True, kw_only=True)
class CPU:
    """CPU cgroup settings; times are in microseconds, ``cpus``/``mems`` are cpuset lists."""

    shares: U64 | None = None
    quota: I64 | None = None
    burst: U64 | None = None
    period: U64 | None = None
    realtime_runtime: I64 | None = None
    realtime_period: U64 | None = None
    cpus: str = ""
    mems: str = ""
    idle: I64 | None = None


@dataclass(frozen=True, kw_only=True)
class Pids:
    """The pids cgroup limit (runtime-spec 1.1: ``limit`` is required; 0 or -1 mean no limit)."""

    limit: I64


@dataclass(frozen=True, kw_only=True)
class WeightDevice:
    """A per-device block I/O weight."""

    major: I64
    minor: I64
    weight: U16 | None = None
    leaf_weight: U16 | None = None


@dataclass(frozen=True, kw_only=True)
class ThrottleDevice:
    """A per-device block I/O rate limit (bytes or operations per second)."""

    major: I64
    minor: I64
    rate: U64


@dataclass(frozen=True, kw_only=True)
class BlockIO:
    """Block I/O cgroup settings."""

    weight: U16 | None = None
    leaf_weight: U16 | None = None
    weight_device: tuple[WeightDevice, ...] = ()
    throttle_read_bps_device: tuple[ThrottleDevice, ...] = ()
    throttle_write_bps_device: tuple[ThrottleDevice, ...] = ()
    throttle_read_iops_device: tuple[ThrottleDevice, ...] = ()
    throttle_write_iops_device: tuple[ThrottleDevice, ...] = ()


@dataclass(frozen=True, kw_only=True)
class HugepageLimit:
    """A hugetlb limit in bytes for one page size (e.g. "2MB")."""

    page_size: str
    limit: U64


@dataclass(frozen=True, kw_only=True)
class InterfacePriority:
    """The net_prio priority of one network interface."""

    name: str
    priority: U32


@dataclass(frozen=True, kw_only=True)
class Network:
    """net_cls class id and net_prio priorities."""

    class_id: U32 | None = None
    priorities: tuple[InterfacePriority, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Rdma:
    """RDMA cgroup limits of one device."""

    hca_handles: U32 | None = None
    hca_objects: U32 | None = None


@dataclass(frozen=True, kw_only=True)
class Resources:
    """``linux.resources``: the cgroup limits of a container (``unified`` holds raw cgroup v2 files)."""

    devices: tuple[DeviceCgroup, ...] = ()
    memory: Memory | None = None
    cpu: CPU | None = None
    pids: Pids | None = None
    block_io: BlockIO | None = None
    hugepage_limits: tuple[HugepageLimit, ...] = ()
    network: Network | None = None
    rdma: Mapping[str, Rdma] = field(default_factory=dict)
    unified: Mapping[str, str] = field(default_factory=dict)

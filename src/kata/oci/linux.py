"""The Linux section of the runtime spec (``linux``): namespaces, id mappings, devices, seccomp, ..."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kata.oci.ints import I64, U32, U64
from kata.oci.resources import Resources

__all__ = [
    "Device",
    "IDMapping",
    "IntelRdt",
    "Linux",
    "Namespace",
    "Personality",
    "Seccomp",
    "SeccompArg",
    "Syscall",
]


@dataclass(frozen=True, kw_only=True)
class IDMapping:
    """``size`` ids starting at ``container_id`` inside map to ids starting at ``host_id`` outside."""

    container_id: U32
    host_id: U32
    size: U32


@dataclass(frozen=True, kw_only=True)
class Namespace:
    """A namespace to create (``path`` "") or to join (``path`` of a namespace file)."""

    type: str
    path: str = ""


@dataclass(frozen=True, kw_only=True)
class Device:
    """A device node to create in the container; ``type`` is one of c, b, u, p."""

    path: str
    type: str
    major: I64 = 0
    minor: I64 = 0
    file_mode: U32 | None = None
    uid: U32 | None = None
    gid: U32 | None = None


@dataclass(frozen=True, kw_only=True)
class SeccompArg:
    """A condition on one syscall argument (libseccomp names: ``op`` "SCMP_CMP_EQ", ...)."""

    index: U64
    value: U64
    value_two: U64 = 0
    op: str


@dataclass(frozen=True, kw_only=True)
class Syscall:
    """A seccomp rule: ``action`` ("SCMP_ACT_ERRNO", ...) for the named syscalls."""

    names: tuple[str, ...]
    action: str
    errno_ret: U32 | None = None
    args: tuple[SeccompArg, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Seccomp:
    """A seccomp filter; an empty ``default_action`` with no syscalls means no filter."""

    default_action: str
    default_errno_ret: U32 | None = None
    architectures: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    listener_path: str = ""
    listener_metadata: str = ""
    syscalls: tuple[Syscall, ...] = ()


@dataclass(frozen=True, kw_only=True)
class IntelRdt:
    """Intel RDT (resctrl) class of service and schemata (runtime-spec 1.1 fields)."""

    clos_id: str = ""
    l3_cache_schema: str = ""
    mem_bw_schema: str = ""
    enable_cmt: bool = False
    enable_mbm: bool = False


@dataclass(frozen=True, kw_only=True)
class Personality:
    """The execution domain (personality(2)): "LINUX" or "LINUX32"."""

    domain: str
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Linux:
    """``linux``: everything about a container that only Linux has."""

    uid_mappings: tuple[IDMapping, ...] = ()
    gid_mappings: tuple[IDMapping, ...] = ()
    sysctl: Mapping[str, str] = field(default_factory=dict)
    resources: Resources | None = None
    cgroups_path: str = ""
    namespaces: tuple[Namespace, ...] = ()
    devices: tuple[Device, ...] = ()
    seccomp: Seccomp | None = None
    rootfs_propagation: str = ""
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    mount_label: str = ""
    intel_rdt: IntelRdt | None = None
    personality: Personality | None = None

    def namespace(self, type_: str) -> Namespace | None:
        """The namespace entry of that type, or None when the container shares the runtime's."""
        return next((ns for ns in self.namespaces if ns.type == type_), None)

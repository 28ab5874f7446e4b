"""The OCI runtime-spec (1.1) config.json model as frozen dataclasses, Linux containers only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kata.oci.ints import I32, I64, U32, U64
from kata.oci.linux import (
    Device,
    IDMapping,
    IntelRdt,
    Linux,
    Namespace,
    Personality,
    Seccomp,
    SeccompArg,
    Syscall,
)
from kata.oci.resources import (
    CPU,
    BlockIO,
    DeviceCgroup,
    HugepageLimit,
    InterfacePriority,
    Memory,
    Network,
    Pids,
    Rdma,
    Resources,
    ThrottleDevice,
    WeightDevice,
)

__all__ = [
    "CPU",
    "OCI_VERSION",
    "BlockIO",
    "Box",
    "Capabilities",
    "Device",
    "DeviceCgroup",
    "Hook",
    "Hooks",
    "HugepageLimit",
    "IDMapping",
    "IntelRdt",
    "InterfacePriority",
    "Linux",
    "Memory",
    "Mount",
    "Namespace",
    "Network",
    "Personality",
    "Pids",
    "Process",
    "Rdma",
    "Resources",
    "Rlimit",
    "Root",
    "Seccomp",
    "SeccompArg",
    "Spec",
    "Syscall",
    "ThrottleDevice",
    "User",
    "WeightDevice",
]

# The runtime-spec version whose Linux fields this model covers, written by default_spec().
OCI_VERSION = "1.1.0"


@dataclass(frozen=True, kw_only=True)
class Box:
    """A terminal size in characters."""

    height: U32
    width: U32


@dataclass(frozen=True, kw_only=True)
class User:
    """Who the process runs as; ``umask`` None keeps the runtime's."""

    uid: U32
    gid: U32
    umask: U32 | None = None
    additional_gids: tuple[U32, ...] = ()
    username: str = ""


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    """The process's capability sets, as "CAP_..." names."""

    bounding: tuple[str, ...] = ()
    effective: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Rlimit:
    """One POSIX resource limit ("RLIMIT_NOFILE", ...)."""

    type: str
    hard: U64
    soft: U64


def _root_user() -> User:
    return User(uid=0, gid=0)


@dataclass(frozen=True, kw_only=True)
class Process:
    """The container's process (``process``), also what an exec runs."""

    terminal: bool = False
    console_size: Box | None = None
    user: User = field(default_factory=_root_user)
    args: tuple[str, ...] = ()
    command_line: str = ""
    env: tuple[str, ...] = ()
    cwd: str
    capabilities: Capabilities | None = None
    rlimits: tuple[Rlimit, ...] = ()
    no_new_privileges: bool = False
    apparmor_profile: str = ""
    oom_score_adj: I32 | None = None
    selinux_label: str = ""


@dataclass(frozen=True, kw_only=True)
class Root:
    """The root filesystem: ``path`` absolute or relative to the bundle."""

    path: str
    readonly: bool = False


@dataclass(frozen=True, kw_only=True)
class Mount:
    """One mount on top of the root filesystem; ``destination`` is absolute inside the container."""

    destination: str
    type: str = ""
    source: str = ""
    options: tuple[str, ...] = ()
    uid_mappings: tuple[IDMapping, ...] = ()
    gid_mappings: tuple[IDMapping, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Hook:
    """A program the runtime runs at a lifecycle point; ``timeout`` in seconds, None for none."""

    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: I64 | None = None


@dataclass(frozen=True, kw_only=True)
class Hooks:
    """Lifecycle hooks (``prestart`` is deprecated in the spec but still run by runc)."""

    prestart: tuple[Hook, ...] = ()
    create_runtime: tuple[Hook, ...] = ()
    create_container: tuple[Hook, ...] = ()
    start_container: tuple[Hook, ...] = ()
    poststart: tuple[Hook, ...] = ()
    poststop: tuple[Hook, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Spec:
    """A container's configuration: config.json, as far as Linux containers use it.

    Mappings (``annotations``, ``linux.sysctl``, ...) are plain dicts: treat them as read-only.
    """

    oci_version: str
    process: Process | None = None
    root: Root | None = None
    hostname: str = ""
    domainname: str = ""
    mounts: tuple[Mount, ...] = ()
    hooks: Hooks | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    linux: Linux | None = None

"""Check a Spec and precompute everything the forked children do, so they only run syscalls."""

from __future__ import annotations

import stat
from dataclasses import dataclass

from kata.errors import OciError
from kata.guest.runtime import syscalls as sc
from kata.guest.runtime.caps import CapabilitySets, plan_capabilities
from kata.guest.runtime.errors import PathEscapeError, UnsupportedError
from kata.guest.runtime.mountopts import PROPAGATION, MountStep, plan_mount
from kata.guest.runtime.seccomp import SeccompProgram, compile_seccomp
from kata.guest.runtime.securejoin import clean_path, escapes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kata.oci import Linux, Process, Spec

__all__ = [
    "DEFAULT_PATH",
    "RLIMITS",
    "ContainerPlan",
    "DeviceNode",
    "NamespacePlan",
    "ProcessPlan",
    "RootfsPlan",
    "plan_container",
    "plan_process",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_UMASK = 0o022
_RLIMIT_NAMES = ("CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE", "MEMLOCK", "AS", "LOCKS",
                 "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME")
RLIMITS = {f"RLIMIT_{name}": number for number, name in enumerate(_RLIMIT_NAMES)}
# Namespaces the monitor child unshares (cgroup is unshared by init itself, once inside its cgroup).
_CLONE_FLAGS = {
    "mount": sc.CLONE_NEWNS, "uts": sc.CLONE_NEWUTS, "ipc": sc.CLONE_NEWIPC, "pid": sc.CLONE_NEWPID,
    "cgroup": sc.CLONE_NEWCGROUP, "network": sc.CLONE_NEWNET, "time": sc.CLONE_NEWTIME,
}
_DEVICE_TYPES = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
_PERSONALITIES = {"LINUX": 0x0000, "LINUX32": 0x0008}


@dataclass(frozen=True)
class ProcessPlan:
    """What the child does for one process: identity, limits, stdio kind and the argv to exec."""

    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    search_path: tuple[str, ...]  # PATH of ``env`` (runc's default when it has none)
    cwd: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    umask: int
    capabilities: CapabilitySets | None  # None: keep the runtime's (runc's behaviour)
    rlimits: tuple[tuple[int, int, int, str], ...]  # (resource, soft, hard, name)
    no_new_privileges: bool
    oom_score_adj: int | None
    terminal: bool
    console_size: tuple[int, int] | None  # (rows, columns)


@dataclass(frozen=True)
class DeviceNode:
    """A device node of ``linux.devices`` to create under the container's /dev."""

    path: str
    mode: int  # file type bits | permissions
    major: int
    minor: int
    uid: int
    gid: int


@dataclass(frozen=True)
class RootfsPlan:
    """The mount work done inside the container's mount namespace, before and after pivot_root."""

    path: str
    readonly: bool
    propagation: int  # applied to "/" first (rootfs_propagation, default rslave)
    mounts: tuple[MountStep, ...]
    default_dev: bool  # the spec mounts nothing on /dev: the runtime mounts a tmpfs, pts and shm
    populate_dev: bool  # /dev is a tmpfs: create the standard nodes and symlinks in it
    devices: tuple[DeviceNode, ...]
    masked_paths: tuple[str, ...]
    readonly_paths: tuple[str, ...]


@dataclass(frozen=True)
class NamespacePlan:
    """Namespaces to join (type, path, CLONE_* flag) and to create."""

    joins: tuple[tuple[str, str, int], ...]
    unshare: int  # CLONE_* flags the monitor unshares before forking init
    cgroup: bool  # init unshares a cgroup namespace after joining its cgroup


@dataclass(frozen=True)
class ContainerPlan:
    """Everything create_container needs, checked and precomputed from the Spec."""

    container_id: str
    rootfs: RootfsPlan
    namespaces: NamespacePlan
    hostname: str
    domainname: str
    sysctl: tuple[tuple[str, str], ...]  # (/proc/sys path, value)
    personality: int | None
    process: ProcessPlan
    seccomp: SeccompProgram | None


def plan_container(container_id: str, spec: Spec, *, sandbox_netns: str | None = None) -> ContainerPlan:
    """Check ``spec`` and turn it into a ContainerPlan.

    Raises:
        OciError: naming the field of a malformed spec.
        PathEscapeError: for a destination or path that leaves the rootfs.
        UnsupportedError: for user namespaces and other features the guest runtime lacks.
    """
    if spec.root is None or not spec.root.path:
        raise OciError("root.path: required")
    if not spec.root.path.startswith("/"):
        raise OciError(f"root.path: must be an absolute path in the guest, got {spec.root.path!r}")
    if spec.process is None:
        raise OciError("process: required")
    linux = spec.linux
    namespaces = _plan_namespaces(linux, sandbox_netns)
    if (spec.hostname or spec.domainname) and not namespaces.unshare & sc.CLONE_NEWUTS and not any(
            kind == "uts" for kind, _, _ in namespaces.joins):
        raise OciError("hostname: needs a uts namespace in linux.namespaces")
    return ContainerPlan(
        container_id=container_id,
        rootfs=_plan_rootfs(spec, linux),
        namespaces=namespaces,
        hostname=spec.hostname,
        domainname=spec.domainname,
        sysctl=_plan_sysctl(linux),
        personality=_plan_personality(linux),
        process=plan_process(spec.process),
        seccomp=compile_seccomp(linux.seccomp, "linux.seccomp") if linux and linux.seccomp else None,
    )


def plan_process(process: Process, where: str = "process") -> ProcessPlan:
    """Check one process (the container's or an exec's) and precompute its identity and limits.

    Raises:
        OciError: naming the field, for empty args, a relative cwd, an unknown rlimit or capability.
    """
    if not process.args:
        raise OciError(f"{where}.args: must not be empty")
    if not process.cwd.startswith("/"):
        raise OciError(f"{where}.cwd: must be an absolute path, got {process.cwd!r}")
    env = tuple((name, value) for name, _, value in (entry.partition("=") for entry in process.env))
    path = next((value for name, value in reversed(env) if name == "PATH"), DEFAULT_PATH)
    size = process.console_size
    return ProcessPlan(
        args=process.args,
        env=env,
        search_path=tuple(part or "." for part in path.split(":")),
        cwd=clean_path(process.cwd),
        uid=process.user.uid,
        gid=process.user.gid,
        groups=process.user.additional_gids,
        umask=DEFAULT_UMASK if process.user.umask is None else process.user.umask,
        capabilities=plan_capabilities(process.capabilities, f"{where}.capabilities"),
        rlimits=_plan_rlimits(process, where),
        no_new_privileges=process.no_new_privileges,
        oom_score_adj=process.oom_score_adj,
        terminal=process.terminal,
        console_size=(size.height, size.width) if size is not None else None,
    )


def _plan_rlimits(process: Process, where: str) -> tuple[tuple[int, int, int, str], ...]:
    limits = []
    for index, rlimit in enumerate(process.rlimits):
        number = RLIMITS.get(rlimit.type)
        if number is None:
            raise OciError(f"{where}.rlimits[{index}].type: unknown rlimit {rlimit.type!r}")
        limits.append((number, rlimit.soft, rlimit.hard, rlimit.type))
    return tuple(limits)


def _plan_namespaces(linux: Linux | None, sandbox_netns: str | None) -> NamespacePlan:
    joins: list[tuple[str, str, int]] = []
    unshare = 0
    cgroup = False
    for index, ns in enumerate(linux.namespaces if linux else ()):
        where = f"linux.namespaces[{index}]"
        if ns.type == "user":
            raise UnsupportedError(f"{where}: user namespaces are not supported in the guest")
        flag = _CLONE_FLAGS.get(ns.type)
        if flag is None:
            raise OciError(f"{where}.type: unknown namespace type {ns.type!r}")
        if ns.path:
            joins.append((ns.type, ns.path, flag))
        elif ns.type == "cgroup":
            cgroup = True
        elif ns.type != "network":  # containers share the VM's (or the sandbox's) network namespace
            unshare |= flag
    if sandbox_netns and not any(kind == "network" for kind, _, _ in joins):
        joins.append(("network", sandbox_netns, sc.CLONE_NEWNET))
    if not unshare & sc.CLONE_NEWNS and not any(kind == "mount" for kind, _, _ in joins):
        raise UnsupportedError("linux.namespaces: a mount namespace is required")
    joins.sort(key=lambda join: join[0] == "mount")  # the mount namespace last, as nsenter does
    return NamespacePlan(joins=tuple(joins), unshare=unshare, cgroup=cgroup)


def _plan_rootfs(spec: Spec, linux: Linux | None) -> RootfsPlan:
    assert spec.root is not None
    mounts = tuple(plan_mount(mount, index) for index, mount in enumerate(spec.mounts))
    dev = next((m for m in mounts if m.destination == "/dev"), None)
    propagation_name = (linux.rootfs_propagation if linux else "") or "rslave"
    propagation = PROPAGATION.get(propagation_name)
    if propagation is None:
        raise OciError(f"linux.rootfsPropagation: unknown propagation {propagation_name!r}")
    return RootfsPlan(
        path=clean_path(spec.root.path),
        readonly=spec.root.readonly,
        propagation=propagation,
        mounts=mounts,
        default_dev=dev is None,
        populate_dev=dev is not None and dev.fstype == "tmpfs",
        devices=_plan_devices(linux),
        masked_paths=_container_paths(linux.masked_paths if linux else (), "linux.maskedPaths"),
        readonly_paths=_container_paths(linux.readonly_paths if linux else (), "linux.readonlyPaths"),
    )


def _container_paths(paths: tuple[str, ...], where: str) -> tuple[str, ...]:
    for index, path in enumerate(paths):
        if not path.startswith("/"):
            raise OciError(f"{where}[{index}]: must be an absolute path, got {path!r}")
        if escapes(path):
            raise PathEscapeError(f"{where}[{index}]: {path} escapes the container's rootfs", path=path)
    return tuple(clean_path(path) for path in paths)


def _plan_devices(linux: Linux | None) -> tuple[DeviceNode, ...]:
    nodes = []
    for index, device in enumerate(linux.devices if linux else ()):
        where = f"linux.devices[{index}]"
        kind = _DEVICE_TYPES.get(device.type)
        if kind is None:
            raise OciError(f"{where}.type: unknown device type {device.type!r}")
        (path,) = _container_paths((device.path,), f"{where}.path")
        nodes.append(DeviceNode(
            path=path, mode=kind | (0o666 if device.file_mode is None else device.file_mode & 0o7777),
            major=device.major, minor=device.minor, uid=device.uid or 0, gid=device.gid or 0,
        ))
    return tuple(nodes)


def _plan_sysctl(linux: Linux | None) -> tuple[tuple[str, str], ...]:
    entries = []
    for key, value in (linux.sysctl if linux else {}).items():
        relative = key if "/" in key else key.replace(".", "/")
        if not key or escapes(relative) or relative.startswith("/"):
            raise OciError(f"linux.sysctl: invalid key {key!r}")
        entries.append(("/proc/sys/" + relative, value))
    return tuple(entries)


def _plan_personality(linux: Linux | None) -> int | None:
    if linux is None or linux.personality is None:
        return None
    persona = _PERSONALITIES.get(linux.personality.domain)
    if persona is None:
        raise OciError(f"linux.personality.domain: unknown domain {linux.personality.domain!r}")
    return persona

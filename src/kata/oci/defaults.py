"""The default spec ``kata-runtime spec`` writes: runc's (libcontainer/specconv/example.go)."""

from __future__ import annotations

import os
from dataclasses import replace

from kata.oci.model import (
    OCI_VERSION,
    Capabilities,
    DeviceCgroup,
    IDMapping,
    Linux,
    Mount,
    Namespace,
    Process,
    Resources,
    Rlimit,
    Root,
    Spec,
)

__all__ = ["DEFAULT_CAPABILITIES", "DEFAULT_MASKED_PATHS", "DEFAULT_READONLY_PATHS", "default_spec"]

DEFAULT_CAPABILITIES = ("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE")
DEFAULT_MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
)
DEFAULT_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

_NOSUID_NOEXEC_NODEV = ("nosuid", "noexec", "nodev")
_MOUNTS = (
    Mount(destination="/proc", type="proc", source="proc"),
    Mount(destination="/dev", type="tmpfs", source="tmpfs",
          options=("nosuid", "strictatime", "mode=755", "size=65536k")),
    Mount(destination="/dev/pts", type="devpts", source="devpts",
          options=("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5")),
    Mount(destination="/dev/shm", type="tmpfs", source="shm",
          options=(*_NOSUID_NOEXEC_NODEV, "mode=1777", "size=65536k")),
    Mount(destination="/dev/mqueue", type="mqueue", source="mqueue", options=_NOSUID_NOEXEC_NODEV),
    Mount(destination="/sys", type="sysfs", source="sysfs", options=(*_NOSUID_NOEXEC_NODEV, "ro")),
    Mount(destination="/sys/fs/cgroup", type="cgroup", source="cgroup",
          options=(*_NOSUID_NOEXEC_NODEV, "relatime", "ro")),
)
# A rootless container cannot mount sysfs: it gets a read-only recursive bind of the host's.
_ROOTLESS_SYS = Mount(destination="/sys", type="none", source="/sys",
                      options=("rbind", *_NOSUID_NOEXEC_NODEV, "ro"))


def default_spec(
    rootless: bool = False,
    *,
    cgroup_namespace: bool = True,
    host_uid: int | None = None,
    host_gid: int | None = None,
) -> Spec:
    """runc's example spec: ``sh`` on a terminal in ./rootfs (read-only) with runc's defaults.

    runc adds the cgroup namespace only on a cgroup v2 host; ``cgroup_namespace`` says whether to.
    ``rootless`` applies runc's ToRootless: no network namespace, a user namespace mapping
    ``host_uid``/``host_gid`` (default: the caller's effective ids) to root, a bind-mounted /sys, no
    uid=/gid= mount options and no cgroup resources.
    """
    namespaces = tuple(Namespace(type=t) for t in ("pid", "network", "ipc", "uts", "mount"))
    if cgroup_namespace:
        namespaces += (Namespace(type="cgroup"),)
    spec = Spec(
        oci_version=OCI_VERSION,
        process=Process(
            terminal=True,
            args=("sh",),
            env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"),
            cwd="/",
            capabilities=Capabilities(
                bounding=DEFAULT_CAPABILITIES, effective=DEFAULT_CAPABILITIES, permitted=DEFAULT_CAPABILITIES
            ),
            rlimits=(Rlimit(type="RLIMIT_NOFILE", hard=1024, soft=1024),),
            no_new_privileges=True,
        ),
        root=Root(path="rootfs", readonly=True),
        hostname="runc",
        mounts=_MOUNTS,
        linux=Linux(
            masked_paths=DEFAULT_MASKED_PATHS,
            readonly_paths=DEFAULT_READONLY_PATHS,
            resources=Resources(devices=(DeviceCgroup(allow=False, access="rwm"),)),
            namespaces=namespaces,
        ),
    )
    if rootless:
        spec = _to_rootless(spec, os.geteuid() if host_uid is None else host_uid,
                            os.getegid() if host_gid is None else host_gid)
    return spec


def _to_rootless(spec: Spec, uid: int, gid: int) -> Spec:
    assert spec.linux is not None
    namespaces = tuple(ns for ns in spec.linux.namespaces if ns.type not in ("network", "user"))
    mounts = tuple(
        _ROOTLESS_SYS if mount.destination == "/sys"
        else replace(mount, options=tuple(o for o in mount.options if not o.startswith(("uid=", "gid="))))
        for mount in spec.mounts
    )
    linux = replace(
        spec.linux,
        namespaces=(*namespaces, Namespace(type="user")),
        uid_mappings=(IDMapping(container_id=0, host_id=uid, size=1),),
        gid_mappings=(IDMapping(container_id=0, host_id=gid, size=1),),
        resources=None,
    )
    return replace(spec, mounts=mounts, linux=linux)

"""JSON documents the OCI CLI prints: ``features`` (runtime-spec 1.1) and ``events`` stats (runc's
types.Stats); pure."""

from __future__ import annotations

from typing import Any

from kata.oci_cli.statejson import OCI_VERSION

__all__ = ["features", "stats_event"]

_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
_MOUNT_OPTIONS = (
    "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "iversion", "lazytime",
    "loud", "mand", "noatime", "nodev", "nodiratime", "noexec", "noiversion", "nolazytime", "nomand",
    "norelatime", "nostrictatime", "nosuid", "private", "rbind", "relatime", "remount", "ro", "rprivate",
    "rshared", "rslave", "runbindable", "rw", "shared", "silent", "slave", "strictatime", "suid", "sync",
    "unbindable",
)


def features() -> dict[str, Any]:
    """What this runtime supports, as runtime-spec 1.1's features document. Hooks are not run (they
    would run on the host for a container that lives in a VM); the network namespace is the VM's."""
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": [],
        "mountOptions": list(_MOUNT_OPTIONS),
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "pid", "uts"],
            "capabilities": list(_CAPABILITIES),
            "cgroup": {"v1": True, "v2": False, "systemd": False, "systemdUser": False, "rdma": False},
            "seccomp": {"enabled": False},
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
        },
        "annotations": {"io.katacontainers.pykata": "true"},
    }


def _entry(entry: Any) -> dict[str, int]:
    return {"limit": entry.limit, "usage": entry.usage, "max": entry.max, "failcnt": entry.failcnt}


def _blkio(entries: Any) -> list[dict[str, object]]:
    return [{"major": e.major, "minor": e.minor, "op": e.op, "value": e.value} for e in entries]


def stats_event(container_id: str, metrics: Any) -> dict[str, Any]:
    """runc's ``events`` stats record of an io.containerd.cgroups.v1.Metrics."""
    cpu, memory = metrics.cpu, metrics.memory
    raw = {field.name: value for field, value in memory.ListFields() if isinstance(value, int)}
    data = {
        "cpu": {"usage": {"total": cpu.usage.total, "percpu": list(cpu.usage.per_cpu), "kernel": cpu.usage.kernel,
                          "user": cpu.usage.user},
                "throttling": {"periods": cpu.throttling.periods,
                               "throttledPeriods": cpu.throttling.throttled_periods,
                               "throttledTime": cpu.throttling.throttled_time}},
        "memory": {"cache": memory.cache, "usage": _entry(memory.usage), "swap": _entry(memory.swap),
                   "kernel": _entry(memory.kernel), "kernelTCP": _entry(memory.kernel_tcp), "raw": raw},
        "pids": {"current": metrics.pids.current, "limit": metrics.pids.limit},
        "blkio": {"ioServiceBytesRecursive": _blkio(metrics.blkio.io_service_bytes_recursive),
                  "ioServicedRecursive": _blkio(metrics.blkio.io_serviced_recursive)},
        "hugetlb": {h.pagesize: {"usage": h.usage, "max": h.max, "failcnt": h.failcnt} for h in metrics.hugetlb},
    }
    return {"type": "stats", "id": container_id, "data": data}

"""Read facts about the host: KVM, vsock, tun, cgroups, network namespaces, versions."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "KvmStatus",
    "boot_id",
    "can_create_netns",
    "cgroup_version",
    "cpu_model",
    "device_usable",
    "kvm_status",
    "program_version",
]

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_API_VERSION = 12
CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class KvmStatus:
    """What the KVM device allows without booting anything."""

    present: bool
    usable: bool
    detail: str


def kvm_status(device: str = "/dev/kvm") -> KvmStatus:
    """Open ``device``, check the API version and create (then drop) an empty VM."""
    if not os.path.exists(device):
        return KvmStatus(False, False, f"{device} does not exist")
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return KvmStatus(True, False, f"cannot open {device}: {exc.strerror}")
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
        if version != KVM_API_VERSION:
            return KvmStatus(True, False, f"KVM API version {version}, expected {KVM_API_VERSION}")
        os.close(fcntl.ioctl(fd, KVM_CREATE_VM, 0))
    except OSError as exc:
        return KvmStatus(True, False, f"KVM_CREATE_VM failed: {exc.strerror}")
    finally:
        os.close(fd)
    return KvmStatus(True, True, "opens, API version 12, KVM_CREATE_VM works")


def device_usable(path: str) -> tuple[bool, str]:
    """Whether character device ``path`` exists and opens read-write."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, f"{path} does not exist"
    except OSError as exc:
        return False, f"cannot open {path}: {exc.strerror}"
    os.close(fd)
    return True, f"{path} opens"


def cgroup_version(root: str = "/sys/fs/cgroup") -> str:
    """``v2`` (unified), ``hybrid`` or ``v1``."""
    if Path(root, "cgroup.controllers").exists():
        return "v2"
    return "hybrid" if Path(root, "unified", "cgroup.controllers").exists() else "v1"


def can_create_netns() -> tuple[bool, str]:
    """Whether this process may create a network namespace (tried in a throwaway child)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        libc = ctypes.CDLL(None, use_errno=True)
        code = 0 if libc.unshare(CLONE_NEWNET) == 0 else min(ctypes.get_errno(), 255) or 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return True, "unshare(CLONE_NEWNET) works"
    return False, f"unshare(CLONE_NEWNET) failed: {os.strerror(code) if code > 0 else code}"


def boot_id() -> str:
    """The kernel's per-boot random id (changes on every host reboot)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def cpu_model() -> str:
    """The host CPU's model name, from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def program_version(path: str, *args: str, timeout: float = 5.0) -> str | None:
    """First line of ``path --version`` (or ``path *args``), or None when it does not run."""
    try:
        proc = subprocess.run([path, *(args or ("--version",))], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.ENOENT, errno.EACCES, errno.ENOEXEC):
            raise
        return None
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if proc.returncode == 0 and lines else None

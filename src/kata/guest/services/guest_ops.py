"""Sandbox-wide guest operations that need no container: clock, entropy, files, hotplug, details."""

from __future__ import annotations

import fcntl
import os
import struct
import time

from kata.ttrpc.status import InvalidArgumentError

__all__ = [
    "ALLOWED_COPY_ROOT",
    "bring_up_loopback",
    "copy_file_chunk",
    "memory_block_size",
    "online_cpus_and_memory",
    "probe_memory",
    "reseed_random",
    "resolve_inside",
    "set_clock",
]

ALLOWED_COPY_ROOT = "/run/kata-containers"
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207
SYS_CPU = "/sys/devices/system/cpu"
SYS_MEMORY = "/sys/devices/system/memory"


SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def bring_up_loopback(name: str = "lo") -> None:
    """Set ``lo`` up (the kernel then gives it 127.0.0.1/8 and ::1): containers share the VM's network
    namespace, so this is their localhost."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", name.encode(), 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        if not flags & IFF_UP:
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH", name.encode(), flags | IFF_UP))


def set_clock(seconds: int, microseconds: int) -> None:
    """Set the guest's realtime clock (clones of a VM template keep the template's time)."""
    time.clock_settime(time.CLOCK_REALTIME, seconds + microseconds / 1_000_000)


def reseed_random(data: bytes, device: str = "/dev/random") -> None:
    """Credit ``data`` as entropy and reseed the CRNG (template clones share the template's state)."""
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        header = struct.pack("ii", len(data) * 8, len(data))
        fcntl.ioctl(fd, RNDADDENTROPY, header + data)
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)


def resolve_inside(path: str, root: str, what: str) -> str:
    """``path`` with symlinks resolved, provided it stays below ``root`` (itself resolved).

    Raises:
        InvalidArgumentError: naming ``what`` when the path is relative or leads outside ``root``.
    """
    real = os.path.realpath(path)
    if not os.path.isabs(path) or os.path.commonpath([real, root]) != root:
        raise InvalidArgumentError(f"{what} {path!r} is outside {root}")
    return real


def copy_file_chunk(path: str, data: bytes, *, offset: int, file_size: int, file_mode: int,
                    dir_mode: int, uid: int, gid: int, root: str = ALLOWED_COPY_ROOT) -> None:
    """Write one chunk of CopyFile; the file appears (renamed into place) once complete.

    Raises:
        InvalidArgumentError: when ``path`` is not below ``root``.
    """
    target = resolve_inside(path, root, "CopyFile: path")
    os.makedirs(os.path.dirname(target), mode=dir_mode or 0o750, exist_ok=True)
    partial = f"{target}.part"
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if offset == 0 else 0)
    fd = os.open(partial, flags, file_mode or 0o644)
    try:
        os.pwrite(fd, data, offset)
        if uid >= 0 or gid >= 0:
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)
    if offset + len(data) >= file_size:
        os.replace(partial, target)


def memory_block_size(sys_memory: str = SYS_MEMORY) -> int:
    """Bytes per hotpluggable memory block (0 when the guest has no memory hotplug)."""
    try:
        with open(f"{sys_memory}/block_size_bytes") as fh:
            return int(fh.read().strip(), 16)
    except (OSError, ValueError):
        return 0


def _online_all(directory: str, prefix: str) -> int:
    count = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        state = f"{directory}/{name}/online"
        if not name.startswith(prefix) or not os.path.exists(state):
            continue
        with open(state, "r+") as fh:
            if fh.read().strip() in ("0", "offline"):
                fh.seek(0)
                fh.write("1")
                count += 1
    return count


def online_cpus_and_memory(*, cpu_only: bool) -> int:
    """Bring every hotplugged vCPU (and memory block) online; returns how many changed."""
    count = _online_all(SYS_CPU, "cpu")
    if not cpu_only:
        count += _online_all(SYS_MEMORY, "memory")
    return count


def probe_memory(addresses: list[int], sys_memory: str = SYS_MEMORY) -> None:
    """Tell the kernel about hotplugged memory at ``addresses`` (architectures without ACPI hotplug)."""
    with open(f"{sys_memory}/probe", "w") as fh:
        for address in addresses:
            fh.write(f"{address:#x}")
            fh.flush()

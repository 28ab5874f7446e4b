"""containerd's rootfs mount list on ``<bundle>/rootfs``: options parsed as containerd does, mount(2)."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

from kata.errors import KataError

__all__ = ["MountOptions", "RootMount", "RootfsError", "mount_all", "parse_options", "unmount_all"]

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MNT_DETACH = 0x2

# option -> (clears the flag?, flag): containerd 1.6 mount/mount_linux.go parseMountOptions.
_FLAGS: dict[str, tuple[bool, int]] = {
    "async": (True, MS_SYNCHRONOUS), "atime": (True, MS_NOATIME), "bind": (False, MS_BIND),
    "defaults": (False, 0), "dev": (True, MS_NODEV), "diratime": (True, MS_NODIRATIME),
    "dirsync": (False, MS_DIRSYNC), "exec": (True, MS_NOEXEC), "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME), "nodev": (False, MS_NODEV), "nodiratime": (False, MS_NODIRATIME),
    "noexec": (False, MS_NOEXEC), "nomand": (True, MS_MANDLOCK), "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME), "nosuid": (False, MS_NOSUID), "rbind": (False, MS_BIND | MS_REC),
    "relatime": (False, MS_RELATIME), "remount": (False, MS_REMOUNT), "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY), "strictatime": (False, MS_STRICTATIME), "suid": (True, MS_NOSUID),
    "sync": (False, MS_SYNCHRONOUS),
}
_libc = ctypes.CDLL(None, use_errno=True)


class RootfsError(KataError):
    """containerd's rootfs could not be mounted (or unmounted) on the bundle."""


@dataclass(frozen=True)
class RootMount:
    """One entry of CreateTaskRequest.rootfs (containerd.types.Mount)."""

    type: str
    source: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class MountOptions:
    """mount(2) flags and the filesystem's data string."""

    flags: int
    data: str


def parse_options(options: Sequence[str]) -> MountOptions:
    """Split mount options into flags and data exactly as containerd 1.6 does (unknown options are
    data for the filesystem, e.g. overlay's lowerdir=...).

    Raises:
        RootfsError: a ``loop`` option (loop devices are not set up here).
    """
    flags, data = 0, []
    for option in options:
        known = _FLAGS.get(option)
        if known is not None and known[1]:
            clear, flag = known
            flags = flags & ~flag if clear else flags | flag
        elif option == "loop":
            raise RootfsError("rootfs mount option 'loop' is not supported")
        elif known is None:
            data.append(option)
    return MountOptions(flags, ",".join(data))


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    if _libc.mount(os.fsencode(source), os.fsencode(target), os.fsencode(fstype) if fstype else None,
                   ctypes.c_ulong(flags), os.fsencode(data) if data else None) != 0:
        code = ctypes.get_errno()
        raise RootfsError(f"mount {fstype or 'bind'} {source} on {target}: {os.strerror(code)}")


def _mount_one(mount: RootMount, target: str) -> None:
    if mount.type.startswith(("fuse.", "fuse3.")):
        raise RootfsError(f"rootfs mount type {mount.type} is not supported")
    parsed = parse_options(mount.options)
    flags = parsed.flags
    if not flags & MS_REMOUNT or parsed.data:
        _mount(mount.source, target, mount.type, flags, parsed.data)
    if flags & (MS_BIND | MS_RDONLY) == MS_BIND | MS_RDONLY:  # a bind mount only becomes read-only on remount
        _mount("", target, "", flags | MS_REMOUNT, "")


def mount_all(mounts: Sequence[RootMount], target: str) -> None:
    """Mount ``mounts`` on ``target`` in order; on failure, unmount what was mounted.

    Raises:
        RootfsError: a mount failed or is of an unsupported kind.
    """
    done = 0
    try:
        for mount in mounts:
            _mount_one(mount, target)
            done += 1
    except RootfsError:
        for _ in range(done):
            unmount_all(target)
        raise


def unmount_all(target: str) -> None:
    """Detach every mount stacked on ``target``; nothing when it is not mounted.

    Raises:
        RootfsError: umount2(2) failed otherwise.
    """
    for _ in range(64):  # stacked mounts: each umount uncovers the next
        if _libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
            code = ctypes.get_errno()
            if code in (errno.EINVAL, errno.ENOENT):
                return
            raise RootfsError(f"unmount {target}: {os.strerror(code)}")
    raise RootfsError(f"unmount {target}: still mounted after 64 unmounts")

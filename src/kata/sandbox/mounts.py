"""Host-side mounts of the shared dir: bind, make shared, unmount, and removal that never crosses a mount."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

from kata.oci import Mount
from kata.sandbox.errors import SandboxError
from kata.sandbox.guestspec import SourceKind, is_bind

__all__ = [
    "bind",
    "make_mountpoint",
    "make_shared",
    "mounts_under",
    "remove_tree",
    "source_kinds",
    "unmount",
]

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 0x100000
MNT_DETACH = 0x2
_libc = ctypes.CDLL(None, use_errno=True)
_ESCAPE = re.compile(r"\\([0-7]{3})")


def _mount(source: str | None, target: str, flags: int) -> None:
    src = None if source is None else os.fsencode(source)
    if _libc.mount(src, os.fsencode(target), None, ctypes.c_ulong(flags), None) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), target)


def bind(source: str, target: Path, *, readonly: bool = False) -> None:
    """Recursively bind-mount ``source`` on ``target`` (read-only when asked).

    Raises:
        SandboxError: mount(2) failed (the half-done mount is undone).
    """
    try:
        _mount(source, str(target), MS_BIND | MS_REC)
    except OSError as exc:
        raise SandboxError(f"bind {source} on {target}: {exc.strerror}") from exc
    if readonly:
        try:
            _mount(None, str(target), MS_REMOUNT | MS_BIND | MS_RDONLY)
        except OSError as exc:
            unmount(target)
            raise SandboxError(f"make {target} read-only: {exc.strerror}") from exc


def make_shared(directory: Path) -> None:
    """Bind ``directory`` on itself and mark it shared, so mounts made below it later reach the
    VMM helpers and host-mode agents that copied it into their own mount namespace.

    Raises:
        SandboxError: mount(2) failed (nothing is left mounted).
    """
    bind(str(directory), directory)
    try:
        _mount(None, str(directory), MS_SHARED)
    except OSError as exc:
        unmount(directory)
        raise SandboxError(f"make {directory} a shared mount: {exc.strerror}") from exc


def unmount(target: Path) -> None:
    """Detach the mount on ``target`` (and those below it); nothing when it is not mounted.

    Raises:
        SandboxError: umount2(2) failed otherwise.
    """
    if _libc.umount2(os.fsencode(str(target)), MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):
            raise SandboxError(f"unmount {target}: {os.strerror(code)}")


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(directory: Path, mountinfo: str = "/proc/self/mountinfo") -> list[Path]:
    """Mount points at or below ``directory``, deepest first."""
    base = str(directory).rstrip("/")
    with open(mountinfo) as fh:
        points = [_unescape(line.split()[4]) for line in fh if line.strip()]
    found = {Path(p) for p in points if p == base or p.startswith(f"{base}/")}
    return sorted(found, key=lambda p: (-len(p.parts), str(p)))


def remove_tree(directory: Path) -> None:
    """Unmount everything at or below ``directory``, then delete it; never deletes through a mount.

    Raises:
        SandboxError: something stays mounted there, or the files cannot be removed.
    """
    for point in mounts_under(directory):
        unmount(point)
    if left := mounts_under(directory):
        raise SandboxError(f"not removing {directory}: still mounted: {', '.join(map(str, left))}")
    try:
        shutil.rmtree(directory)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SandboxError(f"remove {directory}: {exc.strerror}") from exc


def make_mountpoint(target: Path, kind: SourceKind) -> None:
    """Create ``target`` (a directory, or an empty file to bind a file on) with its parents.

    Raises:
        SandboxError: it cannot be created.
    """
    try:
        if kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
    except OSError as exc:
        raise SandboxError(f"create mount point {target}: {exc.strerror}") from exc


def source_kinds(mounts: Iterable[Mount]) -> dict[str, SourceKind]:
    """The sources of bind mounts that are host directories or regular files (I/O: stats each)."""
    kinds: dict[str, SourceKind] = {}
    for mount in mounts:
        if not is_bind(mount) or not os.path.isabs(mount.source):
            continue
        try:
            mode = os.stat(mount.source).st_mode
        except OSError:
            continue
        if stat.S_ISDIR(mode):
            kinds[mount.source] = "dir"
        elif stat.S_ISREG(mode):
            kinds[mount.source] = "file"
    return kinds

"""OCI mount entries to mount(2) steps, with runc's option table (flags, propagation, data)."""

from __future__ import annotations

from dataclasses import dataclass

from kata.errors import OciError
from kata.guest.runtime import syscalls as sc
from kata.guest.runtime.errors import PathEscapeError, UnsupportedError
from kata.guest.runtime.securejoin import clean_path, escapes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kata.oci import Mount

__all__ = ["FLAGS", "PROPAGATION", "MountStep", "plan_mount"]

# name -> (clears the flag, MS_* bits): libcontainer/specconv's mountPropagate table.
FLAGS: dict[str, tuple[bool, int]] = {
    "acl": (False, 1 << 16),
    "async": (True, 0x10),
    "atime": (True, 0x400),
    "bind": (False, sc.MS_BIND),
    "defaults": (False, 0),
    "dev": (True, sc.MS_NODEV),
    "diratime": (True, 0x800),
    "dirsync": (False, 0x80),
    "exec": (True, sc.MS_NOEXEC),
    "iversion": (False, 1 << 23),
    "lazytime": (False, 1 << 25),
    "loud": (True, 0x8000),
    "mand": (False, 0x40),
    "noacl": (True, 1 << 16),
    "noatime": (False, 0x400),
    "nodev": (False, sc.MS_NODEV),
    "nodiratime": (False, 0x800),
    "noexec": (False, sc.MS_NOEXEC),
    "noiversion": (True, 1 << 23),
    "nolazytime": (True, 1 << 25),
    "nomand": (True, 0x40),
    "norelatime": (True, 1 << 21),
    "nostrictatime": (True, sc.MS_STRICTATIME),
    "nosuid": (False, sc.MS_NOSUID),
    "nosymfollow": (False, 0x100),
    "rbind": (False, sc.MS_BIND | sc.MS_REC),
    "relatime": (False, 1 << 21),
    "remount": (False, sc.MS_REMOUNT),
    "ro": (False, sc.MS_RDONLY),
    "rw": (True, sc.MS_RDONLY),
    "silent": (False, 0x8000),
    "strictatime": (False, sc.MS_STRICTATIME),
    "suid": (True, sc.MS_NOSUID),
    "symfollow": (True, 0x100),
    "sync": (False, 0x10),
}
PROPAGATION: dict[str, int] = {
    "private": sc.MS_PRIVATE,
    "shared": sc.MS_SHARED,
    "slave": sc.MS_SLAVE,
    "unbindable": sc.MS_UNBINDABLE,
    "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "rshared": sc.MS_SHARED | sc.MS_REC,
    "rslave": sc.MS_SLAVE | sc.MS_REC,
    "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}
# Options runc knows that need mount_setattr(2) or id-mapped mounts, or copy files (tmpcopyup).
_UNSUPPORTED = frozenset({
    "idmap", "ridmap", "tmpcopyup",
    "rro", "rrw", "rnosuid", "rsuid", "rnodev", "rdev", "rnoexec", "rexec", "rnodiratime",
    "rdiratime", "rrelatime", "rnorelatime", "rnoatime", "ratime", "rstrictatime", "rnostrictatime",
    "rnosymfollow", "rsymfollow",
})
# Mounted writable first and made read-only at the end: the runtime still creates files in them.
_RO_LATER_TYPES = frozenset({"tmpfs"})


@dataclass(frozen=True)
class MountStep:
    """One spec mount, ready for mount(2): ``destination`` is clean and absolute in the container."""

    destination: str
    source: str
    fstype: str  # "" for a bind mount; "cgroup" becomes "cgroup2" (the guest is cgroup v2 only)
    flags: int  # MS_* flags without propagation (MS_RDONLY dropped when ``readonly_later``)
    data: str
    propagation: tuple[int, ...]
    bind: bool
    remount: bool  # a bind mount whose flags need a second, MS_REMOUNT call (ro, nosuid, ...)
    readonly_later: bool  # tmpfs and /dev: remount read-only once the runtime has filled them


def plan_mount(mount: Mount, index: int) -> MountStep:
    """The mount(2) step of ``spec.mounts[index]``.

    Raises:
        OciError: naming the field, for a relative bind source or a missing type.
        PathEscapeError: when the destination climbs above the container's root with "..".
        UnsupportedError: for options that need mount_setattr(2) or id-mapped mounts.
    """
    where = f"mounts[{index}]"
    if escapes(mount.destination):
        raise PathEscapeError(f"{where}.destination: {mount.destination} escapes the container's rootfs",
                              path=mount.destination)
    flags, propagation, data = _parse_options(mount.options, where)
    bind = mount.type == "bind" or bool(flags & sc.MS_BIND)
    if bind:
        flags |= sc.MS_BIND
        if not mount.source.startswith("/"):
            raise OciError(f"{where}.source: a bind mount needs an absolute source, got {mount.source!r}")
    elif mount.type in ("", "none"):
        raise OciError(f"{where}.type: {mount.type!r} needs a bind or rbind option")
    destination = clean_path(mount.destination)
    readonly_later = bool(flags & sc.MS_RDONLY) and not bind and (
        mount.type in _RO_LATER_TYPES or destination == "/dev")
    if readonly_later:
        flags &= ~sc.MS_RDONLY
    fstype = "" if bind else ("cgroup2" if mount.type == "cgroup" else mount.type)
    return MountStep(
        destination=destination, source=mount.source or fstype, fstype=fstype, flags=flags, data=data,
        propagation=propagation, bind=bind,
        remount=bind and bool(flags & ~(sc.MS_REC | sc.MS_REMOUNT | sc.MS_BIND)),
        readonly_later=readonly_later,
    )


def _parse_options(options: tuple[str, ...], where: str) -> tuple[int, tuple[int, ...], str]:
    flags = 0
    propagation: list[int] = []
    data: list[str] = []
    for option in options:
        if option in _UNSUPPORTED:
            raise UnsupportedError(f"{where}.options: {option!r} is not supported in the guest")
        if option in FLAGS:
            clear, bits = FLAGS[option]
            flags = flags & ~bits if clear else flags | bits
        elif option in PROPAGATION:
            propagation.append(PROPAGATION[option])
        else:
            data.append(option)
    return flags, tuple(propagation), ",".join(data)

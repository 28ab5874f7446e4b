"""Raw Linux calls the os module lacks (mount, pivot_root, setns, prctl, capset, ...), bound at import."""

from __future__ import annotations

import ctypes
import os

__all__ = [
    "CLONE_NEWCGROUP",
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWTIME",
    "CLONE_NEWUSER",
    "CLONE_NEWUTS",
    "MNT_DETACH",
    "MS_BIND",
    "MS_MOVE",
    "MS_NODEV",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "MS_REMOUNT",
    "MS_SHARED",
    "MS_SLAVE",
    "MS_STRICTATIME",
    "MS_UNBINDABLE",
    "capset",
    "mount",
    "personality",
    "pivot_root",
    "prctl",
    "seccomp_filter",
    "set_rlimit",
    "setdomainname",
    "sethostname",
    "setns",
    "umount2",
    "unshare",
]

# Everything here may run in a child forked from the multi-threaded agent, where a dlopen()/dlsym()
# lock held by another thread at fork time would never be released: every libc symbol is resolved
# now, at import, and the children only call the bound functions.
CLONE_NEWTIME = 0x80
CLONE_NEWNS = 0x20000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_STRICTATIME = 1 << 24
MNT_DETACH = 0x2

_SYS_PIVOT_ROOT = 155  # x86_64
_SYS_SECCOMP = 317
_SECCOMP_SET_MODE_FILTER = 1

_libc = ctypes.CDLL(None, use_errno=True)
_c_mount = _libc.mount
_c_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_c_umount2 = _libc.umount2
_c_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_c_unshare = _libc.unshare
_c_unshare.argtypes = [ctypes.c_int]
_c_setns = _libc.setns
_c_setns.argtypes = [ctypes.c_int, ctypes.c_int]
_c_sethostname = _libc.sethostname
_c_sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_c_setdomainname = _libc.setdomainname
_c_setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_c_prctl = _libc.prctl
_c_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_c_capset = _libc.capset
_c_capset.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_c_prlimit = _libc.prlimit
_c_prlimit.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_c_personality = _libc.personality
_c_personality.argtypes = [ctypes.c_ulong]
_c_syscall = _libc.syscall
_c_syscall.restype = ctypes.c_long
_c_get_errno = ctypes.get_errno


class _RLimit(ctypes.Structure):
    _fields_ = (("soft", ctypes.c_uint64), ("hard", ctypes.c_uint64))


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32))


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_char_p))


_CapDataPair = _CapData * 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _check(result: int, what: str) -> None:
    if result < 0:
        code = _c_get_errno()
        raise OSError(code, os.strerror(code), what)


def _b(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str = "") -> None:
    """mount(2).

    Raises:
        OSError: with the call's errno; its filename says what was mounted where.
    """
    result = _c_mount(_b(source), _b(target), _b(fstype), flags, _b(data) if data else None)
    _check(result, f"mount {fstype or source or ''} on {target}".replace("  ", " "))


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2).

    Raises:
        OSError: with the call's errno.
    """
    _check(_c_umount2(_b(target), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2).

    Raises:
        OSError: EINVAL when the current root is the initramfs (the caller falls back to MS_MOVE).
    """
    result = _c_syscall(ctypes.c_long(_SYS_PIVOT_ROOT), ctypes.c_char_p(_b(new_root)),
                        ctypes.c_char_p(_b(put_old)))
    _check(result, f"pivot_root {new_root}")


def unshare(flags: int) -> None:
    """unshare(2).

    Raises:
        OSError: with the call's errno.
    """
    _check(_c_unshare(flags), f"unshare {flags:#x}")


def setns(fd: int, nstype: int, what: str) -> None:
    """setns(2) into the namespace open on ``fd``; ``what`` names it in errors.

    Raises:
        OSError: with the call's errno.
    """
    _check(_c_setns(fd, nstype), f"setns {what}")


def sethostname(name: str) -> None:
    """sethostname(2).

    Raises:
        OSError: with the call's errno.
    """
    raw = name.encode()
    _check(_c_sethostname(raw, len(raw)), "sethostname")


def setdomainname(name: str) -> None:
    """setdomainname(2).

    Raises:
        OSError: with the call's errno.
    """
    raw = name.encode()
    _check(_c_setdomainname(raw, len(raw)), "setdomainname")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2); returns its result.

    Raises:
        OSError: with the call's errno.
    """
    result: int = _c_prctl(option, arg2, arg3, arg4, arg5)
    _check(result, f"prctl {option}")
    return result


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) of the calling thread with 64-bit masks (version 3 of the interface).

    Raises:
        OSError: EPERM when adding a capability not in the permitted set.
    """
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _CapDataPair(
        _CapData(effective & 0xFFFFFFFF, permitted & 0xFFFFFFFF, inheritable & 0xFFFFFFFF),
        _CapData(effective >> 32, permitted >> 32, inheritable >> 32),
    )
    _check(_c_capset(ctypes.byref(header), ctypes.byref(data)), "capset")


def set_rlimit(resource: int, soft: int, hard: int, name: str) -> None:
    """prlimit(2) on the caller; ``name`` ("RLIMIT_NOFILE") is for errors.

    Raises:
        OSError: EPERM when raising a hard limit without CAP_SYS_RESOURCE.
    """
    limit = _RLimit(soft, hard)
    _check(_c_prlimit(0, resource, ctypes.byref(limit), None), f"setrlimit {name}")


def personality(persona: int) -> None:
    """personality(2).

    Raises:
        OSError: with the call's errno.
    """
    _check(_c_personality(persona), "personality")


def seccomp_filter(program: bytes, flags: int) -> None:
    """Load a classic BPF program (8-byte sock_filter records) with seccomp(SECCOMP_SET_MODE_FILTER).

    Raises:
        OSError: EACCES without no_new_privs or CAP_SYS_ADMIN, EINVAL for a bad program.
    """
    prog = _SockFprog(len(program) // 8, program)
    result = _c_syscall(ctypes.c_long(_SYS_SECCOMP), ctypes.c_long(_SECCOMP_SET_MODE_FILTER),
                        ctypes.c_long(flags), ctypes.byref(prog))
    _check(result, "seccomp")

"""The few Linux calls PID 1 needs that the os module lacks: mount, finit_module, reboot (via libc)."""

from __future__ import annotations

import ctypes
import errno
import functools
import os

__all__ = [
    "MS_NODEV",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_RELATIME",
    "load_module",
    "mount",
    "power_off",
]

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_RELATIME = 0x200000
SYS_FINIT_MODULE = 313  # x86_64
RB_POWER_OFF = 0x4321FEDC

@functools.cache
def _c() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.reboot.argtypes = [ctypes.c_int]
    return libc


def _fail(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    """mount(2).

    Raises:
        OSError: with the call's errno.
    """
    if _c().mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode() or None) != 0:
        raise _fail(f"mount {fstype} on {target}")


def load_module(path: str) -> bool:
    """Load a kernel module file with finit_module(2) (what insmod does); False if already loaded.

    Raises:
        OSError: when the file cannot be opened or the kernel refuses the module.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _c().syscall(SYS_FINIT_MODULE, fd, b"", 0) == 0:
            return True
        if ctypes.get_errno() == errno.EEXIST:
            return False
        raise _fail(f"finit_module {path}")
    finally:
        os.close(fd)


def power_off() -> None:
    """Sync and power the machine off; returns only if the kernel refused.

    Raises:
        OSError: when reboot(2) fails (e.g. not PID 1's namespace, no CAP_SYS_BOOT).
    """
    os.sync()
    if _c().reboot(RB_POWER_OFF) != 0:
        raise _fail("reboot(RB_POWER_OFF)")

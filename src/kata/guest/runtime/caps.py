"""Linux capabilities: names to bit masks (in the agent) and applying the five sets (in the child)."""

from __future__ import annotations

from dataclasses import dataclass

from kata.errors import OciError
from kata.guest.runtime import syscalls as sc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kata.oci import Capabilities

__all__ = [
    "CAPABILITIES",
    "CapabilitySets",
    "apply_bounding",
    "apply_sets",
    "last_capability",
    "plan_capabilities",
]

_NAMES = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
    "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
    "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE "
    "AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ "
    "PERFMON BPF CHECKPOINT_RESTORE"
)
# "CAP_CHOWN" -> 0, ... in the kernel's numbering (include/uapi/linux/capability.h).
CAPABILITIES: dict[str, int] = {f"CAP_{name}": number for number, name in enumerate(_NAMES.split())}

PR_CAPBSET_DROP = 24
PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4


@dataclass(frozen=True)
class CapabilitySets:
    """The five capability sets of a process as bit masks; ``last`` is the kernel's highest cap."""

    bounding: int
    effective: int
    permitted: int
    inheritable: int
    ambient: int
    last: int


def last_capability() -> int:
    """The highest capability number this kernel knows (/proc/sys/kernel/cap_last_cap)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return len(CAPABILITIES) - 1


def _mask(names: tuple[str, ...], where: str, last: int) -> int:
    mask = 0
    for name in names:
        number = CAPABILITIES.get(name.upper() if name.upper().startswith("CAP_") else f"CAP_{name.upper()}")
        if number is None:
            raise OciError(f"{where}: unknown capability {name!r}")
        if number <= last:  # runc ignores capabilities the kernel does not have
            mask |= 1 << number
    return mask


def plan_capabilities(caps: Capabilities | None, where: str) -> CapabilitySets | None:
    """The masks of ``process.capabilities``; None (keep the runtime's) when the spec has none.

    Raises:
        OciError: naming the set, for an unknown capability name.
    """
    if caps is None:
        return None
    last = last_capability()
    return CapabilitySets(
        bounding=_mask(caps.bounding, f"{where}.bounding", last),
        effective=_mask(caps.effective, f"{where}.effective", last),
        permitted=_mask(caps.permitted, f"{where}.permitted", last),
        inheritable=_mask(caps.inheritable, f"{where}.inheritable", last),
        ambient=_mask(caps.ambient, f"{where}.ambient", last),
        last=last,
    )


def apply_bounding(caps: CapabilitySets) -> None:
    """Drop every capability outside the bounding set and keep the rest across setuid (child side).

    Raises:
        OSError: when prctl refuses (no CAP_SETPCAP).
    """
    for number in range(caps.last + 1):
        if not caps.bounding & (1 << number):
            sc.prctl(PR_CAPBSET_DROP, number)
    sc.prctl(PR_SET_KEEPCAPS, 1)


def apply_sets(caps: CapabilitySets) -> None:
    """Set effective, permitted and inheritable, then raise the ambient ones (after setuid).

    Raises:
        OSError: when capset or the ambient raise is refused.
    """
    sc.prctl(PR_SET_KEEPCAPS, 0)
    sc.capset(caps.effective, caps.permitted, caps.inheritable)
    sc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    for number in range(caps.last + 1):
        if caps.ambient & (1 << number):
            sc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, number)

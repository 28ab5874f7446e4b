"""Compile an OCI seccomp profile to a classic BPF program for x86_64 (what libseccomp does for runc)."""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

from kata.errors import OciError
from kata.guest.runtime.errors import UnsupportedError
from kata.guest.runtime.syscall_table import SYSCALLS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kata.oci import Seccomp, SeccompArg, Syscall

__all__ = ["MAX_INSTRUCTIONS", "SeccompProgram", "compile_seccomp"]

MAX_INSTRUCTIONS = 4096  # BPF_MAXINSNS
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ, _JGT, _JGE = 0x15, 0x25, 0x35  # BPF_JMP | BPF_J* | BPF_K
_JA = 0x05
_RET = 0x06
_AND = 0x54  # BPF_ALU | BPF_AND | BPF_K
_NR_OFFSET, _ARCH_OFFSET, _ARGS_OFFSET = 0, 4, 16
_RET_ERRNO = 0x00050000
_ACTIONS = {
    "SCMP_ACT_KILL": 0x00000000,
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": _RET_ERRNO,
    "SCMP_ACT_TRACE": 0x7FF00000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
}
_FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 1,
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": 32,
}
# System calls of another ABI (i386, x32) never run: they fail with ENOSYS.
_OTHER_ABI = _RET_ERRNO | errno.ENOSYS

# An instruction: (code, jt, jf, k); jt/jf are offsets, or "pass"/"fail" until resolved.
_Target = int | str
_Insn = tuple[int, _Target, _Target, int]


@dataclass(frozen=True)
class SeccompProgram:
    """A compiled filter: ``program`` is sock_filter records, ``flags`` SECCOMP_FILTER_FLAG_* bits."""

    program: bytes
    flags: int

    @property
    def length(self) -> int:
        """Number of BPF instructions."""
        return len(self.program) // 8


def compile_seccomp(profile: Seccomp, where: str) -> SeccompProgram | None:
    """The BPF program of ``profile``; None when it asks for no filter (empty default action).

    Raises:
        OciError: naming the field, for an unknown action, operator, flag or an oversized program.
        UnsupportedError: for SCMP_ACT_NOTIFY (needs a listener) and argument indexes above 5.
    """
    if not profile.default_action and not profile.syscalls:
        return None
    default = _action(profile.default_action, profile.default_errno_ret, f"{where}.defaultAction")
    flags = 0
    for flag in profile.flags:
        if flag not in _FLAGS:
            raise OciError(f"{where}.flags: unknown flag {flag!r}")
        flags |= _FLAGS[flag]
    code: list[_Insn] = [
        (_LD_ABS, 0, 0, _ARCH_OFFSET), (_JEQ, 1, 0, AUDIT_ARCH_X86_64), (_RET, 0, 0, _OTHER_ABI),
        (_LD_ABS, 0, 0, _NR_OFFSET), (_JGE, 0, 1, X32_SYSCALL_BIT), (_RET, 0, 0, _OTHER_ABI),
    ]
    for number, rules in _rules_by_number(profile, default, where).items():
        body = _syscall_body(rules, default)
        code += [(_JEQ, 1, 0, number), (_JA, 0, 0, len(body)), *body]
    code.append((_RET, 0, 0, default))
    if len(code) > MAX_INSTRUCTIONS:
        raise OciError(f"{where}: the filter needs {len(code)} BPF instructions, at most {MAX_INSTRUCTIONS}")
    return SeccompProgram(b"".join(struct.pack("<HBBI", *insn) for insn in code), flags)


def _action(name: str, errno_ret: int | None, where: str) -> int:
    if name == "SCMP_ACT_NOTIFY":
        raise UnsupportedError(f"{where}: SCMP_ACT_NOTIFY is not supported in the guest")
    base = _ACTIONS.get(name)
    if base is None:
        raise OciError(f"{where}: unknown action {name!r}")
    if name == "SCMP_ACT_ERRNO":
        return base | ((errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    if name == "SCMP_ACT_TRACE":
        return base | ((errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    return base


def _rules_by_number(
    profile: Seccomp, default: int, where: str
) -> dict[int, list[tuple[int, tuple[SeccompArg, ...]]]]:
    """Rules grouped by syscall number in profile order; runc's splitting and skipping applied."""
    grouped: dict[int, list[tuple[int, tuple[SeccompArg, ...]]]] = {}
    for index, syscall in enumerate(profile.syscalls):
        here = f"{where}.syscalls[{index}]"
        action = _action(syscall.action, syscall.errno_ret, f"{here}.action")
        if action == default:
            continue  # libseccomp refuses rules that repeat the default action; runc skips them
        for condition_set in _condition_sets(syscall, here):
            for name in syscall.names:
                number = SYSCALLS.get(name)
                if number is not None:  # runc ignores names the architecture lacks
                    grouped.setdefault(number, []).append((action, condition_set))
    return grouped


def _condition_sets(syscall: Syscall, where: str) -> list[tuple[SeccompArg, ...]]:
    """runc: conditions are ANDed, unless one argument has several: then each is its own rule (OR)."""
    for arg in syscall.args:
        if arg.index > 5:
            raise UnsupportedError(f"{where}.args: argument index {arg.index} (system calls have 6)")
    indexes = [arg.index for arg in syscall.args]
    if len(set(indexes)) < len(indexes):
        return [(arg,) for arg in syscall.args]
    return [syscall.args]


def _syscall_body(rules: list[tuple[int, tuple[SeccompArg, ...]]], default: int) -> list[_Insn]:
    body: list[_Insn] = []
    for action, conditions in rules:
        if not conditions:
            body.append((_RET, 0, 0, action))
            return body  # later rules for this syscall can never match
        rule: list[_Insn] = []
        for arg in conditions:
            rule += _resolve(_condition(arg), None)
        rule.append((_RET, 0, 0, action))
        body += _resolve(rule, len(rule))
    body.append((_RET, 0, 0, default))
    return body


def _resolve(code: list[_Insn], fail: int | None) -> list[_Insn]:
    """Turn "pass" (the end of ``code``) and, given ``fail``, "fail" into offsets."""
    resolved: list[_Insn] = []
    for index, (op, jt, jf, k) in enumerate(code):
        def offset(target: _Target, here: int = index) -> _Target:
            if target == "pass":
                return len(code) - here - 1
            if target == "fail" and fail is not None:
                return fail - here - 1
            return target
        resolved.append((op, offset(jt), offset(jf), k))
    return resolved


def _condition(arg: SeccompArg) -> list[_Insn]:
    """Code comparing a 64-bit argument with 32-bit loads: falls through ("pass") or jumps to "fail"."""
    low_at = _ARGS_OFFSET + 8 * arg.index
    high_at = low_at + 4
    value, value_hi, value_lo = arg.value, arg.value >> 32, arg.value & 0xFFFFFFFF
    op = arg.op
    if op == "SCMP_CMP_MASKED_EQ":
        datum = arg.value_two
        return [(_LD_ABS, 0, 0, high_at), (_AND, 0, 0, value >> 32), (_JEQ, 0, "fail", datum >> 32),
                (_LD_ABS, 0, 0, low_at), (_AND, 0, 0, value & 0xFFFFFFFF),
                (_JEQ, 0, "fail", datum & 0xFFFFFFFF)]
    if op == "SCMP_CMP_EQ":
        return [(_LD_ABS, 0, 0, high_at), (_JEQ, 0, "fail", value_hi),
                (_LD_ABS, 0, 0, low_at), (_JEQ, 0, "fail", value_lo)]
    if op == "SCMP_CMP_NE":
        return [(_LD_ABS, 0, 0, high_at), (_JEQ, 0, "pass", value_hi),
                (_LD_ABS, 0, 0, low_at), (_JEQ, "fail", "pass", value_lo)]
    # Ordered comparisons: decide on the high word unless it is equal, then on the low word.
    above, equal_low = {
        "SCMP_CMP_GT": ("pass", (_JGT, "pass", "fail")),
        "SCMP_CMP_GE": ("pass", (_JGE, "pass", "fail")),
        "SCMP_CMP_LT": ("fail", (_JGE, "fail", "pass")),
        "SCMP_CMP_LE": ("fail", (_JGT, "fail", "pass")),
    }.get(op, ("", (0, 0, 0)))
    if not above:
        raise OciError(f"seccomp: unknown operator {op!r}")
    below = "fail" if above == "pass" else "pass"
    low_op, low_jt, low_jf = equal_low
    return [(_LD_ABS, 0, 0, high_at), (_JGT, above, 0, value_hi), (_JEQ, 0, below, value_hi),
            (_LD_ABS, 0, 0, low_at), (low_op, low_jt, low_jf, value_lo)]

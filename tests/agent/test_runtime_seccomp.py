"""The seccomp compiler, checked by running its BPF programs in a small interpreter (and one kernel load)."""

from __future__ import annotations

import errno
import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kata.errors import OciError
from kata.guest.runtime.seccomp import AUDIT_ARCH_X86_64, SeccompProgram, compile_seccomp
from kata.guest.runtime.syscall_table import SYSCALLS
from kata.oci import Seccomp, SeccompArg, Syscall

ALLOW, KILL_PROCESS, ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
U64 = st.integers(min_value=0, max_value=2**64 - 1)
OPS = {
    "SCMP_CMP_EQ": lambda a, v: a == v,
    "SCMP_CMP_NE": lambda a, v: a != v,
    "SCMP_CMP_LT": lambda a, v: a < v,
    "SCMP_CMP_LE": lambda a, v: a <= v,
    "SCMP_CMP_GT": lambda a, v: a > v,
    "SCMP_CMP_GE": lambda a, v: a >= v,
}


def run_bpf(
    program: SeccompProgram, nr: int, args: tuple[int, ...] = (), arch: int = AUDIT_ARCH_X86_64
) -> int:
    """A classic BPF interpreter for the instructions the compiler emits, over a seccomp_data."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * 6)[:6])
    code = [struct.unpack_from("<HBBI", program.program, i) for i in range(0, len(program.program), 8)]
    pc, acc = 0, 0
    while True:
        op, jt, jf, k = code[pc]
        pc += 1
        if op == 0x20:
            (acc,) = struct.unpack_from("<I", data, k)
        elif op == 0x54:
            acc &= k
        elif op == 0x05:
            pc += k
        elif op == 0x06:
            return int(k)
        else:
            taken = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k}[op]
            pc += jt if taken else jf


def profile(*syscalls: Syscall, default: str = "SCMP_ACT_ALLOW") -> SeccompProgram:
    program = compile_seccomp(Seccomp(default_action=default, syscalls=syscalls), "linux.seccomp")
    assert program is not None
    return program


def test_actions_and_default() -> None:
    program = profile(Syscall(names=("mkdir", "nosuch_call"), action="SCMP_ACT_ERRNO", errno_ret=13),
                      Syscall(names=("reboot",), action="SCMP_ACT_KILL_PROCESS"),
                      Syscall(names=("read",), action="SCMP_ACT_ALLOW"))  # the default: skipped
    assert run_bpf(program, SYSCALLS["mkdir"]) == ERRNO | 13
    assert run_bpf(program, SYSCALLS["reboot"]) == KILL_PROCESS
    assert run_bpf(program, SYSCALLS["read"]) == ALLOW
    assert run_bpf(program, SYSCALLS["openat"]) == ALLOW
    assert run_bpf(program, SYSCALLS["read"], arch=0x40000003) == ERRNO | errno.ENOSYS  # i386
    assert run_bpf(program, 0x40000000 | SYSCALLS["read"]) == ERRNO | errno.ENOSYS  # x32
    errno_default = profile(Syscall(names=("read",), action="SCMP_ACT_ALLOW"), default="SCMP_ACT_ERRNO")
    assert run_bpf(errno_default, SYSCALLS["write"]) == ERRNO | errno.EPERM


@given(op=st.sampled_from(sorted(OPS)), value=U64, arg=U64)
def test_argument_comparisons_are_64_bit(op: str, value: int, arg: int) -> None:
    program = profile(Syscall(names=("kill",), action="SCMP_ACT_ERRNO",
                              args=(SeccompArg(index=2, value=value, op=op),)))
    expected = ERRNO | errno.EPERM if OPS[op](arg, value) else ALLOW
    assert run_bpf(program, SYSCALLS["kill"], (0, 0, arg)) == expected


@given(mask=U64, datum=U64, arg=U64)
def test_masked_equal(mask: int, datum: int, arg: int) -> None:
    condition = SeccompArg(index=0, value=mask, value_two=datum, op="SCMP_CMP_MASKED_EQ")
    program = profile(Syscall(names=("kill",), action="SCMP_ACT_ERRNO", args=(condition,)))
    expected = ERRNO | errno.EPERM if arg & mask == datum else ALLOW
    assert run_bpf(program, SYSCALLS["kill"], (arg,)) == expected


def test_conditions_on_different_arguments_are_anded_on_one_argument_ored() -> None:
    anded = profile(Syscall(names=("kill",), action="SCMP_ACT_ERRNO", args=(
        SeccompArg(index=0, value=1, op="SCMP_CMP_EQ"), SeccompArg(index=1, value=9, op="SCMP_CMP_EQ"))))
    assert run_bpf(anded, SYSCALLS["kill"], (1, 9)) == ERRNO | errno.EPERM
    assert run_bpf(anded, SYSCALLS["kill"], (1, 8)) == ALLOW
    # Docker's personality rule: several values of one argument, any of them matches (runc).
    ored = profile(Syscall(names=("personality",), action="SCMP_ACT_ALLOW", args=(
        SeccompArg(index=0, value=0, op="SCMP_CMP_EQ"), SeccompArg(index=0, value=8, op="SCMP_CMP_EQ"))),
        default="SCMP_ACT_ERRNO")
    assert [run_bpf(ored, SYSCALLS["personality"], (v,)) for v in (0, 8, 1)] == [ALLOW, ALLOW, ERRNO | 1]


def test_profile_errors_name_the_field() -> None:
    with pytest.raises(OciError, match=r"linux.seccomp.syscalls\[0\].action: unknown action 'NOPE'"):
        profile(Syscall(names=("read",), action="NOPE"))
    with pytest.raises(OciError, match=r"linux\.seccomp\.flags: unknown flag 'X'"):
        compile_seccomp(Seccomp(default_action="SCMP_ACT_ALLOW", flags=("X",)), "linux.seccomp")
    assert compile_seccomp(Seccomp(default_action=""), "linux.seccomp") is None


def test_a_large_profile_fits_and_loads_in_the_kernel() -> None:
    allowed = Syscall(names=tuple(sorted(SYSCALLS)), action="SCMP_ACT_ALLOW")
    program = profile(allowed, default="SCMP_ACT_ERRNO")
    assert program.length < 4096
    pid = os.fork()
    if pid == 0:  # load it in a child: the filter sticks to the process
        from kata.guest.runtime import syscalls as sc

        try:
            sc.prctl(38, 1)  # PR_SET_NO_NEW_PRIVS
            sc.seccomp_filter(program.program, program.flags)
            os._exit(0 if os.getpid() > 0 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

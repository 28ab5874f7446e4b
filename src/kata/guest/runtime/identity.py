"""Who the process runs as and what it may do, then execve (runs in the forked init or exec child)."""

from __future__ import annotations

import errno
import os
import signal

from kata.guest.runtime import syscalls as sc
from kata.guest.runtime.caps import apply_bounding, apply_sets

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from kata.guest.runtime.plan import ProcessPlan
    from kata.guest.runtime.seccomp import SeccompProgram

__all__ = [
    "ExecFailedError",
    "apply_identity",
    "apply_limits",
    "exec_process",
    "find_executable",
    "reset_signals",
    "write_oom_score_adj",
]

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126


class ExecFailedError(Exception):
    """execve failed: ``exit_code`` is 127 when the file is missing, 126 when it cannot be run."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def reset_signals() -> None:
    """Default dispositions and an empty mask: Python ignores SIGPIPE/SIGXFSZ and execve keeps that."""
    for number in range(1, signal.NSIG):
        if number in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:  # noqa: SIM105 - contextlib is one more import paid at every boot
            signal.signal(number, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # real-time signals the C library reserves
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def apply_limits(process: ProcessPlan) -> None:
    """rlimits; done as root, before the identity changes.

    Raises:
        OSError: naming the rlimit (EPERM raising a hard limit without CAP_SYS_RESOURCE).
    """
    for resource, soft, hard, name in process.rlimits:
        sc.set_rlimit(resource, soft, hard, name)


def write_oom_score_adj(value: int) -> None:
    """Set the caller's oom_score_adj (children inherit it).

    Raises:
        OSError: EACCES/EPERM lowering it without CAP_SYS_RESOURCE.
    """
    fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def apply_identity(process: ProcessPlan, *, die_with_parent: bool) -> None:
    """cwd, capabilities, groups, gid, uid, umask, the parent-death signal and no_new_privs, in runc's order.

    Raises:
        OSError: naming the step that failed.
    """
    os.chdir(process.cwd)
    caps = process.capabilities
    if caps is not None:
        apply_bounding(caps)
    os.setgroups(list(process.groups))
    os.setresgid(process.gid, process.gid, process.gid)
    os.setresuid(process.uid, process.uid, process.uid)
    if caps is not None:
        apply_sets(caps)
    os.umask(process.umask)
    if die_with_parent:
        # Credential changes clear the parent-death signal: set it now, so the process dies with its
        # monitor instead of outliving it unwatched.
        sc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if process.no_new_privileges:
        sc.prctl(PR_SET_NO_NEW_PRIVS, 1)


def find_executable(process: ProcessPlan) -> str:
    """The file to execve: argv[0] itself when it has a "/", else the first match on PATH.

    Raises:
        ExecFailedError: 127 when nothing on PATH matches.
    """
    name = process.args[0]
    if "/" in name:
        return name
    for directory in process.search_path:
        candidate = f"{directory}/{name}"
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise ExecFailedError(f"exec: {name}: executable file not found in $PATH", EXIT_NOT_FOUND)


def exec_process(process: ProcessPlan, seccomp: SeccompProgram | None) -> NoReturn:
    """Load the seccomp filter (when asked to) and execve the process.

    Raises:
        ExecFailedError: with the exit code a shell would give (127 missing, 126 not executable).
        OSError: when the seccomp filter cannot be loaded.
    """
    path = find_executable(process)
    env = dict(process.env)
    reset_signals()
    if seccomp is not None:
        sc.seccomp_filter(seccomp.program, seccomp.flags)
    try:
        os.execve(path, process.args, env)
    except OSError as exc:
        code = EXIT_NOT_FOUND if exc.errno in (errno.ENOENT, errno.ENOTDIR) else EXIT_NOT_EXECUTABLE
        raise ExecFailedError(f"exec: {path}: {exc.strerror}", code) from None

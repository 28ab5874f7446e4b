"""Code that runs in the children forked from the agent: the monitors (A, C) and the processes (B, D).

Forked from a multi-threaded agent, these only use modules imported before the fork and raw
syscalls: no logging, no imports, no locks. Every failure becomes one status line on a pipe
(``E <message>`` or ``X <exit code> <message>``) and os._exit(); nothing returns to the caller.
Status lines: ``P <pid>`` (monitor: the process's pid), ``R`` (init: ready, waiting for start).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass

from kata.guest.runtime import syscalls as sc
from kata.guest.runtime.identity import (
    ExecFailedError,
    apply_identity,
    apply_limits,
    exec_process,
    reset_signals,
    write_oom_score_adj,
)
from kata.guest.runtime.rootfs import finish_rootfs, prepare_rootfs, switch_root
from kata.guest.runtime.stdio import TIOCSCTTY

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from kata.guest.runtime.plan import ContainerPlan, ProcessPlan
    from kata.guest.runtime.seccomp import SeccompProgram

__all__ = ["ChildFds", "run_exec_monitor", "run_init_monitor"]

EXIT_SETUP_FAILED = 1


@dataclass(frozen=True)
class ChildFds:
    """The fds a forked child keeps; -1 when unused."""

    status: int  # write end of the status pipe (close-on-exec: EOF tells the agent execve worked)
    start: int  # init: read end of the start pipe
    stdio: tuple[int, int, int]  # the child's stdin, stdout, stderr (the pty slave three times)
    cgroup_procs: int  # the container cgroup's cgroup.procs, opened for writing by the agent
    namespaces: tuple[tuple[int, int, str], ...]  # (fd, CLONE_* type, name) to setns() into

    def all(self) -> set[int]:
        """Every fd the monitor keeps."""
        return {self.status} | self.for_process() | {ns[0] for ns in self.namespaces}

    def for_process(self) -> set[int]:
        """The fds the forked process uses (the monitor closes them after the fork)."""
        return {fd for fd in (self.start, self.cgroup_procs, *self.stdio) if fd >= 0}


def _report(fd: int, line: str) -> None:
    try:  # noqa: SIM105 - contextlib is one more import paid at every boot
        os.write(fd, (line.replace("\n", " ")[:4000] + "\n").encode(errors="replace"))
    except OSError:
        pass  # the agent is gone: nobody to tell


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if isinstance(exc.filename, str) else ""
        return f"{where}: {exc.strerror}" if where else exc.strerror
    return str(exc) or type(exc).__name__


def _keep_only(keep: set[int]) -> None:
    """Close every fd except ``keep``: other containers' pipes must never stay open here."""
    last = 2
    for fd in sorted(keep):
        if fd > last + 1:
            os.closerange(last + 1, fd)
        last = fd
    os.closerange(last + 1, os.sysconf("SC_OPEN_MAX"))


def _wait_status(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _enter_stdio(stdio: tuple[int, int, int], terminal: bool) -> None:
    """New session; the pty slave as controlling terminal; the three fds onto 0, 1 and 2."""
    os.setsid()
    if terminal:
        fcntl.ioctl(stdio[0], TIOCSCTTY, 0)
    lifted = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in stdio]
    for target, fd in enumerate(lifted):
        os.dup2(fd, target)
    for fd in {*lifted, *stdio} - {0, 1, 2}:
        os.close(fd)


def _monitor_prologue(fds: ChildFds) -> None:
    reset_signals()  # the Reaper's SIGCHLD handler must not steal our child's status
    _keep_only(fds.all())


def _monitor_epilogue(fds: ChildFds, pid: int, linger: bool) -> NoReturn:
    """Report the process's pid; then wait for it and exit with its status, or (``linger`` False) leave.

    A monitor that leaves hands its child to the agent (PID 1 or a subreaper), which reaps it: the
    monitor no longer keeps the agent's pages of the moment of the fork alive (the agent goes on writing
    to its heap, and every page it writes would be copied for the monitor: guest AnonPages of an idle
    sandbox with one container 15.2 MiB with lingering monitors, 9.9 MiB without).
    """
    for fd in fds.for_process():
        os.close(fd)
    _report(fds.status, f"P {pid}")
    os.close(fds.status)
    os._exit(_wait_status(pid) if linger else 0)


def run_init_monitor(plan: ContainerPlan, fds: ChildFds, console: str | None, no_pivot: bool,
                     linger: bool) -> NoReturn:
    """Monitor A: enter/create namespaces, fork init (B), report its pid, then :func:`_monitor_epilogue`."""
    try:
        _monitor_prologue(fds)
        for fd, nstype, name in fds.namespaces:
            sc.setns(fd, nstype, name)
            os.close(fd)
        if plan.namespaces.unshare:
            sc.unshare(plan.namespaces.unshare)
        pid = os.fork()
        if pid == 0:
            _run_init(plan, fds, console, no_pivot, linger)
        _monitor_epilogue(fds, pid, linger)
    except BaseException as exc:
        _report(fds.status, f"E namespaces: {_describe(exc)}")
    os._exit(EXIT_SETUP_FAILED)


def _run_init(plan: ContainerPlan, fds: ChildFds, console: str | None, no_pivot: bool, linger: bool) -> NoReturn:
    """Init (B): join the cgroup, build the rootfs, set identity, report ready, wait, execve."""
    process = plan.process
    phase = "cgroup"
    try:
        if fds.cgroup_procs >= 0:
            os.write(fds.cgroup_procs, b"0")
            os.close(fds.cgroup_procs)
        if plan.namespaces.cgroup:
            sc.unshare(sc.CLONE_NEWCGROUP)
        phase = "stdio"
        _enter_stdio(fds.stdio, process.terminal)
        phase = "namespaces"
        _configure_namespaces(plan)
        phase = "rootfs"
        os.umask(0)
        prepare_rootfs(plan.rootfs, console, process.cwd)
        switch_root(plan.rootfs.path, no_pivot=no_pivot)
        finish_rootfs(plan.rootfs)
        phase = "process"
        seccomp = _identity(process, plan.seccomp, linger)
        _report(fds.status, "R")
        if os.read(fds.start, 1) != b"S":
            os._exit(EXIT_SETUP_FAILED)  # the agent gave up on this container before starting it
        os.close(fds.start)
        phase = "exec"
        exec_process(process, seccomp)
    except ExecFailedError as exc:
        _report(fds.status, f"X {exc.exit_code} {exc}")
        os._exit(exc.exit_code)
    except BaseException as exc:
        _report(fds.status, f"E {phase}: {_describe(exc)}")
    os._exit(EXIT_SETUP_FAILED)


def _configure_namespaces(plan: ContainerPlan) -> None:
    """hostname, domainname, sysctls, oom_score_adj and personality (the agent's /proc still visible)."""
    if plan.hostname:
        sc.sethostname(plan.hostname)
    if plan.domainname:
        sc.setdomainname(plan.domainname)
    for path, value in plan.sysctl:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    if plan.process.oom_score_adj is not None:
        write_oom_score_adj(plan.process.oom_score_adj)
    if plan.personality is not None:
        sc.personality(plan.personality)


def _identity(process: ProcessPlan, seccomp: SeccompProgram | None, linger: bool) -> SeccompProgram | None:
    """rlimits, identity and (without no_new_privs, while still privileged) seccomp.

    The process dies with a lingering monitor (its parent); a monitor that leaves hands it to the agent.

    Returns the filter still to load right before execve (when no_new_privs is set, runc's order).
    """
    apply_limits(process)
    if seccomp is not None and not process.no_new_privileges:
        sc.seccomp_filter(seccomp.program, seccomp.flags)
        seccomp = None
    apply_identity(process, die_with_parent=linger)
    return seccomp


def run_exec_monitor(process: ProcessPlan, seccomp: SeccompProgram | None, fds: ChildFds,
                     linger: bool) -> NoReturn:
    """Monitor C: setns() into the container, fork the process (D), then :func:`_monitor_epilogue`."""
    try:
        _monitor_prologue(fds)
        if process.oom_score_adj is not None:
            write_oom_score_adj(process.oom_score_adj)  # inherited by D; /proc is the agent's here
        for fd, nstype, name in fds.namespaces:
            sc.setns(fd, nstype, name)
            os.close(fd)
        pid = os.fork()
        if pid == 0:
            _run_exec(process, seccomp, fds, linger)
        _monitor_epilogue(fds, pid, linger)
    except BaseException as exc:
        _report(fds.status, f"E namespaces: {_describe(exc)}")
    os._exit(EXIT_SETUP_FAILED)


def _run_exec(process: ProcessPlan, seccomp: SeccompProgram | None, fds: ChildFds, linger: bool) -> NoReturn:
    """The exec'd process (D): join the cgroup, stdio, identity, execve."""
    phase = "cgroup"
    try:
        if fds.cgroup_procs >= 0:
            os.write(fds.cgroup_procs, b"0")
            os.close(fds.cgroup_procs)
        phase = "stdio"
        _enter_stdio(fds.stdio, process.terminal)
        phase = "process"
        seccomp = _identity(process, seccomp, linger)
        phase = "exec"
        exec_process(process, seccomp)
    except ExecFailedError as exc:
        _report(fds.status, f"X {exc.exit_code} {exc}")
        os._exit(exc.exit_code)
    except BaseException as exc:
        _report(fds.status, f"E {phase}: {_describe(exc)}")
    os._exit(EXIT_SETUP_FAILED)

"""Forking a container's init or an exec'd process from the agent, and reading what the child reports."""

from __future__ import annotations

import gc
import os
import signal

from kata.guest.runtime import child
from kata.guest.runtime import syscalls as sc
from kata.guest.runtime.child import ChildFds
from kata.guest.runtime.errors import ExecError, SetupError
from kata.guest.runtime.process import ContainerProcess, ExitLatch
from kata.guest.runtime.state import ProcessState
from kata.guest.runtime.stdio import Stdio

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

    from kata.guest.runtime.plan import ContainerPlan, ProcessPlan
    from kata.guest.runtime.seccomp import SeccompProgram
    from kata.guest.runtime.watch import ChildWatcher

__all__ = ["EXEC_NAMESPACES", "InitLaunch", "StatusReader", "launch_exec", "launch_init"]

# /proc/<pid>/ns entries an exec joins, the mount namespace last (it changes the root).
EXEC_NAMESPACES = (("ipc", sc.CLONE_NEWIPC), ("uts", sc.CLONE_NEWUTS), ("net", sc.CLONE_NEWNET),
                   ("pid", sc.CLONE_NEWPID), ("cgroup", sc.CLONE_NEWCGROUP), ("time", sc.CLONE_NEWTIME),
                   ("mnt", sc.CLONE_NEWNS))
# How long a child that reported a failure gets to exit on its own before it is killed.
FAILED_CHILD_GRACE = 5.0


class StatusReader:
    """Lines from a child's status pipe: (kind, text), None at EOF (every writer closed or exec'd)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""

    def read(self) -> tuple[str, str] | None:
        while b"\n" not in self._buffer:
            data = os.read(self.fd, 4096)
            if not data:
                if not self._buffer:
                    return None
                self._buffer += b"\n"
                break
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        kind, _, text = line.decode(errors="replace").partition(" ")
        return kind, text

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class InitLaunch:
    """A container's init, set up and blocked before execve: ``start()`` releases it."""

    def __init__(self, process: ContainerProcess, start_fd: int, status: StatusReader) -> None:
        self.process = process
        self._start_fd = start_fd
        self._status = status

    def start(self) -> None:
        """Let init execve; returns once it did.

        Raises:
            ExecError: when execve failed (the process exits 127 or 126).
            SetupError: when the child failed otherwise.
        """
        try:  # noqa: SIM105 - contextlib is one more import paid at every boot
            os.write(self._start_fd, b"S")
        except BrokenPipeError:
            pass  # init is gone: the status pipe says why (or EOF)
        self.abandon()
        try:
            failure = _read_until_eof(self._status)
        finally:
            self._status.close()
        if failure is not None:
            raise failure

    def abandon(self) -> None:
        """Close the start pipe: an init that was never started exits."""
        if self._start_fd >= 0:
            os.close(self._start_fd)
            self._start_fd = -1

    def close(self) -> None:
        self.abandon()
        self._status.close()


def _read_until_eof(status: StatusReader) -> SetupError | None:
    failure = None
    while (message := status.read()) is not None:
        failure = failure or _failure(*message)
    return failure


def _failure(kind: str, text: str) -> SetupError | None:
    if kind == "X":
        code, _, message = text.partition(" ")
        return ExecError(message, int(code))
    if kind == "E":
        return SetupError(text)
    return None


def _open_namespaces(joins: tuple[tuple[str, str, int], ...]) -> list[tuple[int, int, str]]:
    opened: list[tuple[int, int, str]] = []
    try:
        for kind, path, flag in joins:
            try:
                opened.append((os.open(path, os.O_RDONLY | os.O_CLOEXEC), flag, f"{kind} {path}"))
            except OSError as exc:
                raise SetupError(f"{kind} namespace {path}: {exc.strerror}") from exc
    except BaseException:
        for fd, _, _ in opened:
            os.close(fd)
        raise
    return opened


def exec_namespaces(pid: int) -> tuple[tuple[str, str, int], ...]:
    """The namespaces of ``pid`` that differ from the agent's, as joins for an exec.

    Raises:
        SetupError: when ``pid`` is gone.
    """
    joins = []
    for name, flag in EXEC_NAMESPACES:
        path = f"/proc/{pid}/ns/{name}"
        try:
            theirs = os.stat(path)
        except FileNotFoundError as exc:
            if name == "time" and os.path.isdir(f"/proc/{pid}"):
                continue  # kernel without time namespaces
            raise SetupError(f"process {pid} is not running") from exc
        ours = os.stat(f"/proc/self/ns/{name}")
        if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
            joins.append((name, path, flag))
    return tuple(joins)


def _fork(target: Callable[[ChildFds], NoReturn], fds: ChildFds, latch: ExitLatch,
          watcher: ChildWatcher) -> int:
    pid = os.fork()
    if pid == 0:
        # No collections until execve: one would touch (and so copy) every page of objects it scans.
        gc.disable()
        try:
            target(fds)
        finally:
            os._exit(child.EXIT_SETUP_FAILED)  # never unwind into the agent's stack in the child
    watcher.watch(pid, latch.on_exit)
    return pid


def _hand_over(monitor: int, monitor_latch: ExitLatch, pid: int | None, watcher: ChildWatcher,
               linger: bool) -> tuple[int, ExitLatch]:
    """The monitor's pid and the latch of the process's exit, as the ContainerProcess keeps them.

    A lingering monitor exits with the process's status. One that leaves (``linger`` False) has handed
    its child to the agent: once it is gone, the agent watches the process itself (monitor pid 0).
    """
    if linger or pid is None:  # a monitor that failed before forking: its own exit is the process's
        return monitor, monitor_latch
    monitor_latch.wait()  # it reported the pid and leaves at once; then the process is our child
    monitor_latch.close()
    latch = ExitLatch()
    watcher.watch(pid, latch.on_exit)
    return 0, latch


def _spawn(
    target: Callable[[ChildFds], NoReturn], stdio: Stdio, joins: tuple[tuple[str, str, int], ...], *,
    cgroup_procs: str | None, watcher: ChildWatcher, start_fd: int,
) -> tuple[int, ExitLatch, StatusReader]:
    """Fork a monitor with its fds; the agent's copies of the child's ends are closed afterwards."""
    namespaces: list[tuple[int, int, str]] = []
    status_r = status_w = procs = -1
    try:
        namespaces = _open_namespaces(joins)
        status_r, status_w = os.pipe()
        if cgroup_procs is not None:
            procs = os.open(cgroup_procs, os.O_WRONLY | os.O_CLOEXEC)
        fds = ChildFds(status=status_w, start=start_fd, stdio=stdio.child_fds, cgroup_procs=procs,
                       namespaces=tuple(namespaces))
        latch = ExitLatch()
        try:
            monitor = _fork(target, fds, latch, watcher)
        except BaseException:
            latch.close()
            raise
    except BaseException:
        if status_r >= 0:
            os.close(status_r)
        raise
    finally:
        for fd in {status_w, procs, *(ns[0] for ns in namespaces)} - {-1}:
            os.close(fd)
        stdio.close_child_ends()
    return monitor, latch, StatusReader(status_r)


def launch_init(plan: ContainerPlan, watcher: ChildWatcher, *, cgroup_procs: str | None,
                no_pivot: bool) -> InitLaunch:
    """Fork the container's monitor and init; returns once init is set up and waits for start.

    Raises:
        SetupError: naming the step that failed in the child (nothing is left running).
    """
    stdio = Stdio(plan.process.terminal, plan.process.console_size)
    console = stdio.console_path
    linger = not watcher.adopts_orphans
    start_r, start_w = os.pipe()
    try:
        monitor, latch, status = _spawn(
            lambda fds: child.run_init_monitor(plan, fds, console, no_pivot, linger),
            stdio, plan.namespaces.joins, cgroup_procs=cgroup_procs, watcher=watcher, start_fd=start_r)
    except BaseException:
        stdio.close()
        os.close(start_w)
        raise
    finally:
        os.close(start_r)
    pid, failure = _read_ready(status)
    monitor, latch = _hand_over(monitor, latch, pid, watcher, linger)
    process = ContainerProcess("", pid or 0, monitor_pid=monitor, stdio=stdio, latch=latch,
                               state=ProcessState.CREATED)
    launch = InitLaunch(process, start_w, status)
    if failure is not None or pid is None:
        launch.close()
        _reap_failed(process)
        raise failure or SetupError("init: exited before reporting its pid")
    return launch


def _read_ready(status: StatusReader) -> tuple[int | None, SetupError | None]:
    pid: int | None = None
    ready = False
    while not (ready and pid is not None):
        message = status.read()
        if message is None:
            return pid, SetupError("init: exited during setup")
        kind, text = message
        if kind == "P":
            pid = int(text)
        elif kind == "R":
            ready = True
        elif (failure := _failure(kind, text)) is not None:
            return pid, failure
    return pid, None


def _reap_failed(process: ContainerProcess) -> None:
    """A child reported a failure and exits by itself; kill what is left after a grace period."""
    if process.latch.wait(FAILED_CHILD_GRACE) is None:
        for pid in (process.pid, process.monitor_pid):
            if pid > 0:
                try:  # noqa: SIM105
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        process.latch.wait()
    process.close()


def launch_exec(
    exec_id: str, plan: ProcessPlan, seccomp: SeccompProgram | None, *, init_pid: int,
    watcher: ChildWatcher, cgroup_procs: str | None,
) -> tuple[ContainerProcess, ExecError | None]:
    """Fork a monitor that joins ``init_pid``'s namespaces and runs ``plan``; returns after execve.

    When execve itself failed the process is returned with the ExecError: it exits 127 or 126.

    Raises:
        SetupError: when joining the container or setting the process up failed (nothing is left).
    """
    joins = exec_namespaces(init_pid)
    stdio = Stdio(plan.terminal, plan.console_size)
    linger = not watcher.adopts_orphans
    try:
        monitor, latch, status = _spawn(
            lambda fds: child.run_exec_monitor(plan, seccomp, fds, linger),
            stdio, joins, cgroup_procs=cgroup_procs, watcher=watcher, start_fd=-1)
    except BaseException:
        stdio.close()
        raise
    pid = 0
    failure: SetupError | None = None
    try:
        while (message := status.read()) is not None:
            if message[0] == "P":
                pid = int(message[1])
            failure = failure or _failure(*message)
    finally:
        status.close()
    monitor, latch = _hand_over(monitor, latch, pid or None, watcher, linger)
    process = ContainerProcess(exec_id, pid, monitor_pid=monitor, stdio=stdio, latch=latch,
                               state=ProcessState.RUNNING)
    if isinstance(failure, ExecError) and pid:
        return process, failure
    if failure is not None or not pid:
        _reap_failed(process)
        raise failure or SetupError(f"exec {exec_id}: exited before reporting its pid")
    return process, None

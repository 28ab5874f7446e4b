"""One process of a container as the agent sees it: pids, stdio, state and its exit status."""

from __future__ import annotations

import os
import select
import time

from kata.guest.runtime.state import ProcessState, advance

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kata.guest.runtime.stdio import Stdio

__all__ = ["ContainerProcess", "ExitLatch", "exit_status"]


def exit_status(code: int) -> int:
    """A watcher's exit code (negative: killed by that signal) as a shell status: 128+signal."""
    return 128 - code if code < 0 else code


class ExitLatch:
    """Set once with the process's exit status (from the process, or its lingering monitor); any number
    of threads can wait for it.

    ``on_exit`` may run inside the Reaper's SIGCHLD handler (in the main thread, between bytecodes):
    it takes no lock, it only stores the status and writes to a pipe that waiters poll.
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        self.status: int | None = None

    def on_exit(self, pid: int, code: int) -> None:
        """The ChildWatcher callback."""
        del pid
        self.status = exit_status(code)
        try:  # noqa: SIM105 - contextlib is one more import paid at every boot
            os.write(self._write_fd, b"x")
        except OSError:
            pass  # closed: nobody waits any more

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status, blocking until there is one; None when ``timeout`` (seconds) passes."""
        if self.status is not None:
            return self.status
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.status is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            poller.poll(None if left is None else int(left * 1000) + 1)
            if deadline is not None and time.monotonic() >= deadline:
                break
        return self.status

    def close(self) -> None:
        """Release the pipe (after the status is known)."""
        for fd in (self._read_fd, self._write_fd):
            try:  # noqa: SIM105
                os.close(fd)
            except OSError:
                pass
        self._read_fd = self._write_fd = -1


class ContainerProcess:
    """The container's init (``exec_id`` "") or an exec'd process.

    ``pid`` is the process in the container (as the agent sees it), ``monitor_pid`` the agent's direct
    child that waits for it and exits with its status (0 when the monitor left and the agent watches
    ``pid`` itself).
    """

    def __init__(self, exec_id: str, pid: int, *, monitor_pid: int, stdio: Stdio, latch: ExitLatch,
                 state: ProcessState) -> None:
        self.exec_id = exec_id
        self.pid = pid
        self.monitor_pid = monitor_pid
        self.stdio = stdio
        self.latch = latch
        self._state = state
        self.waited = False  # wait_process returned its status

    @property
    def state(self) -> ProcessState:
        """The current state (EXITED as soon as the monitor's exit is known)."""
        if self._state is not ProcessState.EXITED and self.latch.status is not None:
            self._state = advance(f"process {self.exec_id!r}", self._state, ProcessState.EXITED)
        return self._state

    def mark_running(self) -> None:
        """CREATED -> RUNNING, once execve succeeded (unless it has exited meanwhile)."""
        if self.state is ProcessState.CREATED:
            self._state = advance(f"process {self.exec_id!r}", self._state, ProcessState.RUNNING)

    @property
    def exit_status(self) -> int | None:
        """The exit status (128+signal when killed), None while it runs."""
        return self.latch.status

    def close(self) -> None:
        """Release stdio and the latch (the process has exited)."""
        self.stdio.close()
        self.latch.close()

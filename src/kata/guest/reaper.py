"""PID 1 duties for children: reap every exited process (orphans included) and hand out exit codes."""

from __future__ import annotations

import os
import signal
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Reaper"]

# Exit codes of children nobody has asked for yet (orphans, or a race with watch()); the oldest go.
MAX_UNCLAIMED = 1024
PR_SET_CHILD_SUBREAPER = 36


class Reaper:
    """Reaps children in its own thread, woken by SIGCHLD; :meth:`watch` hands out exit codes.

    Nothing else in the guest may call waitpid(): the reaper would race it for the status. The signal
    handler only wakes the thread (through ``signal.set_wakeup_fd``); reaping and the bookkeeping of
    watchers happen under one lock, so a child that exits while ``watch`` is being called for it is
    never lost. Callbacks run in the reaper thread (or in the caller of ``watch``), outside the lock.

    Orphans are this process's children: it is PID 1, or :meth:`install` makes it a child subreaper.
    """

    adopts_orphans = True

    def __init__(self) -> None:
        self._watchers: dict[int, Callable[[int, int], None]] = {}
        self._unclaimed: dict[int, int] = {}
        self._lock = threading.Lock()

    def install(self) -> None:
        """Start reaping on every SIGCHLD (call from the main thread, once)."""
        if os.getpid() != 1:  # PID 1 adopts orphans anyway (and pays no ctypes import at boot)
            from kata.guest.runtime.syscalls import prctl

            prctl(PR_SET_CHILD_SUBREAPER, 1)
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        threading.Thread(target=self._run, args=(read_fd,), name="reaper", daemon=True).start()
        self.reap()  # children that exited before the handler was in place

    def _run(self, read_fd: int) -> None:
        while True:
            os.read(read_fd, 512)  # one byte per signal delivered to a Python handler
            self.reap()

    def reap(self) -> int:
        """Collect every exited child now; returns how many were reaped."""
        ready: list[tuple[Callable[[int, int], None], int, int]] = []
        count = 0
        with self._lock:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                count += 1
                code = os.waitstatus_to_exitcode(status)
                callback = self._watchers.pop(pid, None)
                if callback is not None:
                    ready.append((callback, pid, code))
                    continue
                self._unclaimed[pid] = code
                if len(self._unclaimed) > MAX_UNCLAIMED:
                    del self._unclaimed[next(iter(self._unclaimed))]
        for callback, pid, code in ready:
            callback(pid, code)
        return count

    def watch(self, pid: int, callback: Callable[[int, int], None]) -> None:
        """Call ``callback(pid, exit_code)`` when ``pid`` exits (now, if it already has).

        The exit code is negative (-signal) for a child killed by a signal, as in subprocess.
        """
        with self._lock:
            code = self._unclaimed.pop(pid, None)
            if code is None:
                self._watchers[pid] = callback
                return
        callback(pid, code)

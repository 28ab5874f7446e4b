"""PID 1 duties for children: reap every exited process (orphans included) and hand out exit codes."""

from __future__ import annotations

import os
import signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

__all__ = ["Reaper"]

# Exit codes of children nobody has asked for yet (orphans, or a race with watch()); the oldest go.
MAX_UNCLAIMED = 1024


class Reaper:
    """Reaps children on SIGCHLD; the agent gets a process's exit code with :meth:`watch`.

    Nothing else in the guest may call waitpid(): the reaper would race it for the status.
    """

    def __init__(self) -> None:
        self._watchers: dict[int, Callable[[int, int], None]] = {}
        self._unclaimed: dict[int, int] = {}

    def install(self) -> None:
        """Reap on every SIGCHLD (signal handlers run in the main thread, between bytecodes)."""
        signal.signal(signal.SIGCHLD, self._on_sigchld)

    def _on_sigchld(self, signum: int, frame: FrameType | None) -> None:
        del signum, frame
        self.reap()

    def reap(self) -> int:
        """Collect every exited child now; returns how many were reaped."""
        count = 0
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return count
            if pid == 0:
                return count
            count += 1
            code = os.waitstatus_to_exitcode(status)
            callback = self._watchers.pop(pid, None)
            if callback is not None:
                callback(pid, code)
                continue
            self._unclaimed[pid] = code
            if len(self._unclaimed) > MAX_UNCLAIMED:
                del self._unclaimed[next(iter(self._unclaimed))]

    def watch(self, pid: int, callback: Callable[[int, int], None]) -> None:
        """Call ``callback(pid, exit_code)`` when ``pid`` exits (now, if it already has).

        The exit code is negative (-signal) for a child killed by a signal, as in subprocess.
        """
        if pid in self._unclaimed:
            callback(pid, self._unclaimed.pop(pid))
        else:
            self._watchers[pid] = callback

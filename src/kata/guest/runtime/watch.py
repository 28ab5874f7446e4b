"""How the runtime learns that a child it forked exited: the ChildWatcher seam and a host-mode watcher."""

from __future__ import annotations

import os
import threading
from typing import Protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ChildWatcher", "ThreadWatcher"]


class ChildWatcher(Protocol):
    """Calls ``callback(pid, exit_code)`` once ``pid`` (a direct child) exits.

    ``exit_code`` is negative (-signal) for a child killed by a signal, as in subprocess. In the guest
    this is kata.guest.reaper.Reaper (the only code allowed to call waitpid); the callback may then run
    inside a signal handler, so the runtime's callbacks only store the code and write to a pipe.

    ``adopts_orphans`` is True when the orphans of the runtime's children become this process's
    children (PID 1, or a child subreaper reaping every child): a monitor can then leave as soon as it
    forked the container's process, instead of staying alive as its parent.
    """

    adopts_orphans: bool

    def watch(self, pid: int, callback: Callable[[int, int], None]) -> None:
        """Arrange for ``callback`` to be called when ``pid`` exits (at once if it already has)."""


class ThreadWatcher:
    """Host mode: one daemon thread per child blocked in waitpid() on that pid only."""

    adopts_orphans = False  # an ordinary process: orphans go to init, so monitors stay as parents

    def watch(self, pid: int, callback: Callable[[int, int], None]) -> None:
        """Wait for ``pid`` in a new thread and call ``callback(pid, exit_code)`` from it."""
        threading.Thread(target=self._wait, args=(pid, callback), name=f"wait-{pid}", daemon=True).start()

    @staticmethod
    def _wait(pid: int, callback: Callable[[int, int], None]) -> None:
        _, status = os.waitpid(pid, 0)
        callback(pid, os.waitstatus_to_exitcode(status))

"""OOM events for GetOOMEvent: a thread that notices memory.events' oom_kill going up, per container."""

from __future__ import annotations

import os
import select
import threading
import time
from collections import deque

from kata.guest.runtime.cgroups import parse_flat_keyed
from kata.guest.runtime.errors import RuntimeClosedError

__all__ = ["OomMonitor"]


class _Watched:
    __slots__ = ("count", "fd", "path")

    def __init__(self, path: str, fd: int, count: int) -> None:
        self.path = path
        self.fd = fd
        self.count = count


def _oom_kills(fd: int) -> int:
    try:
        return parse_flat_keyed(os.pread(fd, 4096, 0).decode()).get("oom_kill", 0)
    except OSError:
        return 0


class OomMonitor:
    """Watches memory.events files; ``next_event()`` hands out container ids, oldest first.

    cgroup files signal changes with POLLPRI; the thread also re-reads every file each
    ``interval`` seconds, and ``check()`` reads them at once (called when a container's init exits).
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._watched: dict[str, _Watched] = {}
        self._events: deque[str] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False

    def watch(self, container_id: str, events_path: str) -> None:
        """Start reporting OOM kills in ``events_path``; a missing file (no memory controller) is a no-op."""
        try:
            fd = os.open(events_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        with self._cond:
            if self._closed:
                os.close(fd)
                return
            self._watched[container_id] = _Watched(events_path, fd, _oom_kills(fd))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="oom-monitor", daemon=True)
                self._thread.start()
        os.write(self._wake_w, b"w")

    def unwatch(self, container_id: str) -> None:
        """Stop watching (checking one last time first)."""
        self.check()
        with self._cond:
            watched = self._watched.pop(container_id, None)
        if watched is not None:
            os.close(watched.fd)  # a poll() in progress holds its own reference to the file
            os.write(self._wake_w, b"w")

    def check(self) -> None:
        """Read every watched file now and queue an event per container whose oom_kill went up."""
        with self._cond:
            for container_id, watched in self._watched.items():
                count = _oom_kills(watched.fd)
                if count > watched.count:
                    watched.count = count
                    self._events.append(container_id)
                    self._cond.notify_all()

    def next_event(self, timeout: float | None = None) -> str:
        """The id of the next container that had a process OOM-killed; blocks until there is one.

        Raises:
            TimeoutError: when ``timeout`` seconds pass without an event.
            RuntimeClosedError: when the monitor is closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._events:
                if self._closed:
                    raise RuntimeClosedError("oom events: the runtime is closed")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("oom events: none within the timeout")
                self._cond.wait(left)
            return self._events.popleft()

    def close(self) -> None:
        """Stop the thread, close the files and wake every waiter."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        os.write(self._wake_w, b"w")
        if thread is not None:
            thread.join()
        with self._cond:
            for watched in self._watched.values():
                os.close(watched.fd)
            self._watched.clear()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                poller = select.poll()
                poller.register(self._wake_r, select.POLLIN)
                for watched in self._watched.values():
                    poller.register(watched.fd, select.POLLPRI | select.POLLERR)
            ready = poller.poll(int(self.interval * 1000))
            if any(fd == self._wake_r for fd, _ in ready):
                os.read(self._wake_r, 4096)
            self.check()

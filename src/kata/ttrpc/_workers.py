"""A growing pool of worker threads where every queued job has a worker of its own (handlers may block)."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable

__all__ = ["WorkerPool"]

Job = Callable[[], None]


class WorkerPool:
    """Runs jobs on threads, starting a new thread whenever no idle one is reserved for the job.

    Handlers such as "wait for process" block for a long time, so a fixed pool could
    starve; instead every submitted job reserves an idle worker or starts one, up to
    ``max_workers`` (beyond that, jobs queue until a worker frees up).
    """

    __slots__ = ("_closed", "_idle", "_jobs", "_lock", "_max_workers", "_name", "_threads")

    def __init__(self, max_workers: int = 256, *, name: str = "ttrpc-worker") -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads: list[threading.Thread] = []
        self._max_workers = max_workers
        self._name = name
        self._closed = False

    @property
    def size(self) -> int:
        """Worker threads started so far (workers stay until :meth:`shutdown`)."""
        return len(self._threads)

    def submit(self, job: Job) -> None:
        """Run ``job`` on a worker thread; exceptions it raises are the job's own business.

        Raises:
            RuntimeError: the pool is shut down.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("worker pool is shut down")
            if self._idle == 0 and len(self._threads) < self._max_workers:
                thread = threading.Thread(
                    target=self._work, args=(job,), name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
                return
            if self._idle:
                self._idle -= 1
        self._jobs.put(job)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop taking jobs, let workers finish theirs and join them; True if all ended in ``timeout``."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)
        others = [thread for thread in threads if thread is not threading.current_thread()]
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in others:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in others)

    def _work(self, job: Job | None) -> None:
        while job is not None:
            with contextlib.suppress(Exception):  # jobs report their own errors; the worker survives
                job()
            with self._lock:
                self._idle += 1
            job = self._jobs.get()

"""OOM events: a task long-polling the agent's GetOOMEvent and calling the sandbox's callbacks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from kata.errors import KataError
from kata.log import fields
from kata.ttrpc.status import DeadlineExceededError

__all__ = ["OomCallback", "OomSource", "OomWatcher"]

_log = logging.getLogger("kata.sandbox.oom")
OomCallback = Callable[[str], None]


@runtime_checkable
class OomSource(Protocol):
    """An agent client that can long-poll OOM events (GetOOMEvent)."""

    async def get_oom_event(self) -> str:
        """Block until a container's process is OOM-killed; that container's id."""


class OomWatcher:
    """Calls every callback with the container id of each OOM event, until stopped or the agent goes."""

    def __init__(self, agent: object, sandbox_id: str) -> None:
        self._agent = agent
        self._sandbox_id = sandbox_id
        self._callbacks: list[OomCallback] = []
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, callback: OomCallback) -> Callable[[], None]:
        """Add ``callback`` (starting the watch on first use); returns the unsubscribe function."""
        self._callbacks.append(callback)
        if self._task is None:
            if isinstance(self._agent, OomSource):
                self._task = asyncio.get_running_loop().create_task(self._watch(self._agent), name="oom-events")
            else:
                _log.warning("OOM events unavailable: the agent client has no get_oom_event",
                             extra=fields(sandbox=self._sandbox_id))
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    async def _watch(self, agent: OomSource) -> None:
        while True:
            try:
                container_id = await agent.get_oom_event()
            except DeadlineExceededError:
                continue
            except KataError as exc:
                _log.debug("OOM watch ended: %s", exc, extra=fields(sandbox=self._sandbox_id))
                return
            _log.info("container OOM", extra=fields(sandbox=self._sandbox_id, container=container_id))
            for callback in list(self._callbacks):
                try:
                    callback(container_id)
                except Exception:  # a broken subscriber must not end the watch
                    _log.exception("OOM callback failed", extra=fields(sandbox=self._sandbox_id))

    async def stop(self) -> None:
        """End the watch."""
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

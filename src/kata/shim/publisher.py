"""Events to containerd: Events/Forward on TTRPC_ADDRESS, one at a time in publishing order, retried."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from kata.errors import KataError
from kata.log import fields
from kata.protocols.events import envelope
from kata.protocols.pb import events_service_pb2
from kata.protocols.services import EVENTS_SERVICE
from kata.ttrpc.aio import AsyncClient, connect_unix

__all__ = ["MAX_ATTEMPTS", "MemoryPublisher", "Publisher", "RemotePublisher"]

_log = logging.getLogger("kata.shim.events")
MAX_ATTEMPTS = 6  # containerd's shim publisher: the first try and up to 5 requeues, 1 s, 2 s, ... apart
FORWARD_TIMEOUT = 5.0
Connector = Callable[[str], Awaitable[AsyncClient]]


class Publisher(Protocol):
    """Where the Task service sends its events; ``publish`` never blocks and never raises."""

    def publish(self, topic: str, event: Message) -> None:
        """Queue ``event`` under ``topic``; events reach containerd in the order they were published."""

    async def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (waiting up to ``timeout`` s), then stop."""


class MemoryPublisher:
    """A Publisher that keeps the events in ``events`` (for tests and for runs without containerd)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Message]] = []

    def publish(self, topic: str, event: Message) -> None:
        """See :meth:`Publisher.publish`."""
        self.events.append((topic, event))

    async def close(self, timeout: float = 5.0) -> None:
        """See :meth:`Publisher.close`."""

    @property
    def topics(self) -> list[str]:
        """The topics published so far, in order."""
        return [topic for topic, _ in self.events]


class RemotePublisher:
    """Forwards envelopes to containerd's ttRPC events service from one worker task, so order is kept:
    a failed Forward is retried (reconnecting, 1 s, 2 s, ... later) before the next event is tried;
    after MAX_ATTEMPTS it is dropped with an error in the log, as containerd's own shims do."""

    def __init__(self, address: str, namespace: str, *, connect: Connector = connect_unix,
                 backoff: float = 1.0, max_attempts: int = MAX_ATTEMPTS) -> None:
        self.address = address
        self.namespace = namespace
        self._connect = connect
        self._backoff = backoff
        self._max_attempts = max_attempts
        self._queue: asyncio.Queue[events_service_pb2.ForwardRequest] = asyncio.Queue()
        self._client: AsyncClient | None = None
        self._worker: asyncio.Task[None] | None = None

    def publish(self, topic: str, event: Message) -> None:
        """See :meth:`Publisher.publish` (the envelope's timestamp is taken now)."""
        request = events_service_pb2.ForwardRequest(envelope=envelope(self.namespace, topic, event))
        self._queue.put_nowait(request)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="event-publisher")

    async def _run(self) -> None:
        while True:
            request = await self._queue.get()
            try:
                await self._deliver(request)
            finally:
                self._queue.task_done()

    async def _deliver(self, request: events_service_pb2.ForwardRequest) -> None:
        topic = request.envelope.topic
        for attempt in range(1, self._max_attempts + 1):
            try:
                await self._forward(request)
                _log.debug("event published", extra=fields(topic=topic))
                return
            except (KataError, OSError) as exc:
                _log.warning("forward event: %s", exc, extra=fields(topic=topic, attempt=attempt))
                await self._disconnect()
            if attempt < self._max_attempts:
                await asyncio.sleep(self._backoff * attempt)
        _log.error("evicting event from the queue after %d attempts", self._max_attempts, extra=fields(topic=topic))

    async def _forward(self, request: events_service_pb2.ForwardRequest) -> None:
        if self._client is None:
            self._client = await self._connect(self.address)
        await self._client.call(EVENTS_SERVICE, "Forward", request, empty_pb2.Empty, timeout=FORWARD_TIMEOUT)

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close(timeout=1.0)

    async def close(self, timeout: float = 5.0) -> None:
        """See :meth:`Publisher.close`."""
        if self._worker is not None:
            try:
                async with asyncio.timeout(timeout):
                    await self._queue.join()
            except TimeoutError:
                _log.error("%d events not delivered before exit", self._queue.qsize() + 1)
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        await self._disconnect()

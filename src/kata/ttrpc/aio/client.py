"""asyncio ttRPC client: concurrent unary calls multiplexed by stream id over one byte stream."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from kata.errors import ProtocolError
from kata.ttrpc.aio.address import unix_path
from kata.ttrpc.aio.transport import BufferedPipe, Pipe, StreamPipe
from kata.ttrpc.connection import ClientConnection
from kata.ttrpc.events import ClientEvent, ResponseReceived, StreamFailed
from kata.ttrpc.frames import MAX_MESSAGE_SIZE
from kata.ttrpc.status import (
    ConnectionClosedError,
    DeadlineExceededError,
    UnavailableError,
    error_for_status,
)

__all__ = ["AsyncClient", "Metadata", "connect", "connect_socket", "connect_unix"]

_log = logging.getLogger("kata.ttrpc")

M = TypeVar("M", bound=Message)
Metadata = Mapping[str, str] | Sequence[tuple[str, str]]


class AsyncClient:
    """A ttRPC client over one byte stream: unix socket, vsock, a QEMU chardev socket.

    Calls run concurrently, each on its own stream id. Build one with :func:`connect`,
    :func:`connect_socket` or :meth:`from_streams`, inside a running event loop.
    """

    def __init__(self, pipe: Pipe, *, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self._loop = asyncio.get_running_loop()
        self._pipe = pipe
        self._conn = ClientConnection(max_message_size=max_message_size)
        self._waiters: dict[int, asyncio.Future[ResponseReceived]] = {}
        self._lost: str | None = None
        pipe.start(self)

    @classmethod
    def from_streams(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> AsyncClient:
        """A client over an asyncio (StreamReader, StreamWriter) pair."""
        return cls(StreamPipe(reader, writer), max_message_size=max_message_size)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def pending(self) -> int:
        """Calls waiting for their response."""
        return len(self._waiters)

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> M:
        """Call ``service/method`` with ``request``; return the decoded response.

        ``timeout`` (seconds) bounds the wait here and travels to the server as its deadline.

        Raises:
            RpcError: the server answered a non-OK status (a :class:`StatusError` subclass
                per code, e.g. NotFoundError, UnimplementedError).
            DeadlineExceededError: no answer within ``timeout``.
            ConnectionClosedError: the client is closed or the connection was lost.
            ResourceExhaustedError: the request or the response exceeds the message limit.
            ProtocolError: the response is malformed.
        """
        payload = await self.call_raw(
            service, method, request.SerializeToString(), timeout=timeout, metadata=metadata
        )
        try:
            return response_type.FromString(payload)
        except DecodeError as exc:
            raise ProtocolError(
                f"{service}/{method}: cannot decode {response_type.__name__} response: {exc}"
            ) from exc

    async def call_raw(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> bytes:
        """Like :meth:`call` with serialized request and response payloads.

        Raises:
            ValueError: ``timeout`` is not positive.
            RpcError, DeadlineExceededError, ConnectionClosedError, ResourceExhaustedError,
            ProtocolError: as for :meth:`call`.
        """
        timeout_nano = 0
        if timeout is not None:
            if timeout <= 0:
                raise ValueError(f"timeout must be positive, not {timeout}")
            timeout_nano = int(timeout * 1e9)
        if self._lost is not None:
            raise ConnectionClosedError(f"connection lost: {self._lost}; cannot call {service}/{method}")
        pairs = metadata.items() if isinstance(metadata, Mapping) else metadata
        stream_id, frame = self._conn.send_request(
            service, method, payload, timeout_nano=timeout_nano, metadata=pairs
        )
        future: asyncio.Future[ResponseReceived] = self._loop.create_future()
        self._waiters[stream_id] = future
        self._pipe.write(frame)
        timer = None
        if timeout is not None:
            timer = self._loop.call_later(timeout, self._expire, stream_id, f"{service}/{method}", timeout)
        try:
            await self._pipe.drain()
            response = await future
        except asyncio.CancelledError:
            self._forget(stream_id)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if response.code:
            raise error_for_status(response.code, response.message)
        return response.payload

    async def close(self, timeout: float | None = None) -> None:
        """Refuse new calls, let pending ones finish (for up to ``timeout`` s), then close the stream.

        Calls still pending after ``timeout`` fail with :class:`ConnectionClosedError`. Never raises.
        """
        self._conn.close()
        waiting = list(self._waiters.values())
        if waiting and timeout != 0:
            await asyncio.wait(waiting, timeout=timeout)
        self.connection_lost("the client was closed")
        self._pipe.close()
        await self._pipe.wait_closed()

    # Receiver: called by the pipe.

    def data_received(self, data: bytes) -> None:
        """Deliver the responses ``data`` completes to their calls."""
        for event in self._conn.receive_data(data):
            self._deliver(event)

    def connection_lost(self, reason: str) -> None:
        """Fail every pending call: the stream is gone."""
        if self._lost is None:
            self._lost = reason
        for event in self._conn.connection_lost(reason):
            self._deliver(event)

    def _forget(self, stream_id: int) -> None:
        self._waiters.pop(stream_id, None)
        self._conn.abandon(stream_id)

    def _expire(self, stream_id: int, method: str, timeout: float) -> None:
        future = self._waiters.pop(stream_id, None)
        if future is not None and not future.done():
            self._conn.abandon(stream_id)
            future.set_exception(DeadlineExceededError(f"{method}: no response within {timeout:g} s"))

    def _deliver(self, event: ClientEvent) -> None:
        if isinstance(event, ResponseReceived | StreamFailed):
            future = self._waiters.pop(event.stream_id, None)
            if future is None or future.done():
                return
            if isinstance(event, ResponseReceived):
                future.set_result(event)
            else:
                future.set_exception(event.error)
        else:
            _log.warning("event=protocol-violation stream=%d error=%s", event.stream_id, event.error)


async def connect_socket(sock: socket.socket, *, max_message_size: int = MAX_MESSAGE_SIZE) -> AsyncClient:
    """A client over an already connected stream socket (unix, vsock); the client owns it."""
    loop = asyncio.get_running_loop()
    _, pipe = await loop.connect_accepted_socket(BufferedPipe, sock)
    return AsyncClient(pipe, max_message_size=max_message_size)


async def connect_unix(path: str, *, max_message_size: int = MAX_MESSAGE_SIZE) -> AsyncClient:
    """A client connected to the unix socket at ``path``.

    Raises:
        UnavailableError: nothing accepts connections there.
    """
    loop = asyncio.get_running_loop()
    try:
        _, pipe = await loop.create_unix_connection(BufferedPipe, path)
    except OSError as exc:
        raise UnavailableError(f"cannot connect to unix socket {path!r}: {exc}") from exc
    return AsyncClient(pipe, max_message_size=max_message_size)


async def connect(address: str, *, max_message_size: int = MAX_MESSAGE_SIZE) -> AsyncClient:
    """A client connected to ``address`` (``unix:///path``, ``unix:path``, a bare path, ``@abstract``).

    Raises:
        ValueError: the address is not a unix socket address.
        UnavailableError: nothing accepts connections there.
    """
    return await connect_unix(unix_path(address), max_message_size=max_message_size)

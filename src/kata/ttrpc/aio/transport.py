"""Byte pipes under the asyncio client and server: a stream pair, or a faster buffered protocol."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

__all__ = ["BufferedPipe", "Pipe", "Receiver", "StreamPipe"]

_READ_SIZE = 64 * 1024
# Above this many unsent bytes a writer waits for the transport to drain.
_WRITE_HIGH_WATER = 256 * 1024


class Receiver(Protocol):
    """Where a pipe delivers what it reads."""

    def data_received(self, data: bytes) -> None:
        """Bytes arrived."""

    def connection_lost(self, reason: str) -> None:
        """The stream ended (called exactly once, also after :meth:`Pipe.close`)."""


class Pipe:
    """One byte stream: it feeds a :class:`Receiver` and writes without blocking."""

    def start(self, receiver: Receiver) -> None:
        """Begin delivering data to ``receiver``."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        """Queue ``data`` for sending; dropped once the stream is closing. Never raises."""
        raise NotImplementedError

    async def drain(self) -> None:
        """Wait while too much is queued (flow control). Never raises."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the stream; the receiver's ``connection_lost`` follows. Never raises."""
        raise NotImplementedError

    async def wait_closed(self) -> None:
        """Wait until the stream is closed and the receiver told. Never raises."""
        raise NotImplementedError


class StreamPipe(Pipe):
    """A pipe over an asyncio (StreamReader, StreamWriter) pair, read by a task of its own."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._pump: asyncio.Task[None] | None = None

    def start(self, receiver: Receiver) -> None:
        self._pump = asyncio.get_running_loop().create_task(self._read(receiver), name="ttrpc-stream-reader")

    async def _read(self, receiver: Receiver) -> None:
        reason = "the peer closed the connection"
        try:
            while data := await self._reader.read(_READ_SIZE):
                receiver.data_received(data)
        except asyncio.CancelledError:
            reason = "stream closed"
            raise
        except OSError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            receiver.connection_lost(reason)

    def write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)

    async def drain(self) -> None:
        if self._writer.transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()

    def close(self) -> None:
        self._writer.close()  # the reader then sees end of stream

    async def wait_closed(self) -> None:
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        if self._pump is not None:
            if not self._pump.done():
                self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump


class BufferedPipe(asyncio.BufferedProtocol, Pipe):
    """A pipe that is itself the transport's protocol, reading into one reused buffer.

    ``on_connected`` (for servers) is called once the transport exists, to :meth:`start` it.

    Faster than a stream pair: no reader task, and no large allocation per read
    (asyncio's socket transport otherwise allocates 256 KiB for every recv).
    """

    def __init__(self, on_connected: Callable[[BufferedPipe], object] | None = None) -> None:
        self._on_connected = on_connected
        self._buffer = memoryview(bytearray(_READ_SIZE))
        self._transport: asyncio.Transport | None = None
        self._receiver: Receiver | None = None
        self._early: list[bytes] = []  # data that arrived before start()
        self._lost: str | None = None
        self._closed = asyncio.get_running_loop().create_future()
        self._writable = asyncio.Event()
        self._writable.set()

    # asyncio.BufferedProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self._on_connected is not None:
            self._on_connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = bytes(self._buffer[:nbytes])
        if self._receiver is None:
            self._early.append(data)
        else:
            self._receiver.data_received(data)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = "the peer closed the connection" if exc is None else f"{type(exc).__name__}: {exc}"
        self._writable.set()
        if self._receiver is not None:
            self._receiver.connection_lost(self._lost)
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # Pipe

    def start(self, receiver: Receiver) -> None:
        self._receiver = receiver
        for data in self._early:
            receiver.data_received(data)
        self._early.clear()
        if self._lost is not None:
            receiver.connection_lost(self._lost)

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    async def drain(self) -> None:
        await self._writable.wait()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

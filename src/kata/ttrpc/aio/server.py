"""asyncio ttRPC server: every request runs as its own task, under its deadline."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from types import TracebackType

from kata.errors import RpcError
from kata.ttrpc.aio.transport import BufferedPipe, Pipe, StreamPipe
from kata.ttrpc.connection import ServerConnection
from kata.ttrpc.dispatch import PreparedCall, Router
from kata.ttrpc.events import ProtocolViolation, RequestReceived, StreamFailed
from kata.ttrpc.frames import MAX_MESSAGE_SIZE
from kata.ttrpc.sockets import remove_socket_file, socket_file_inode
from kata.ttrpc.status import Code, DeadlineExceededError, status_for_exception

__all__ = ["AsyncServer"]

_log = logging.getLogger("kata.ttrpc")


class _Peer:
    """One served connection (its pipe's receiver): protocol state and running calls."""

    __slots__ = ("calls", "conn", "done", "pipe", "server")

    def __init__(self, server: AsyncServer, pipe: Pipe, conn: ServerConnection) -> None:
        self.server = server
        self.pipe = pipe
        self.conn = conn
        self.calls: set[asyncio.Task[None]] = set()
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, RequestReceived):
                self.server._start_call(self, event)
            elif isinstance(event, StreamFailed):
                _log.info("event=stream-rejected stream=%d error=%s", event.stream_id, event.error)
                self.pipe.write(self.conn.send_error(event.stream_id, event.error))
            elif isinstance(event, ProtocolViolation):
                _log.warning("event=protocol-violation stream=%d error=%s", event.stream_id, event.error)

    def connection_lost(self, reason: str) -> None:
        for task in self.calls:
            task.cancel()  # nobody is left to answer
        self.server._peers.discard(self)
        if not self.done.done():
            self.done.set_result(None)


class AsyncServer:
    """Serves a :class:`Router` on unix sockets, connected sockets or any asyncio stream pair.

    Handlers may be coroutine functions or plain functions (run inline on the loop,
    so they must not block). ``timeout_nano`` becomes a deadline: the handler task is
    cancelled and the call answered DEADLINE_EXCEEDED when it passes. When a peer
    goes away, its running handlers are cancelled.
    """

    def __init__(self, router: Router, *, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self._router = router
        self._limit = max_message_size
        self._listeners: list[asyncio.Server] = []
        self._socket_files: list[tuple[str, int | None]] = []
        self._peers: set[_Peer] = set()
        self._closing = False

    async def __aenter__(self) -> AsyncServer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def listen_unix(self, path: str) -> None:
        """Accept connections on a new unix socket at ``path``.

        Raises:
            OSError: the socket cannot be created or bound.
            RuntimeError: the server is closing.
        """
        if self._closing:
            raise RuntimeError("server is closing")
        loop = asyncio.get_running_loop()
        listener = await loop.create_unix_server(lambda: BufferedPipe(self._attach), path)
        self._listeners.append(listener)
        self._socket_files.append((path, socket_file_inode(path)))

    async def serve_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one stream pair until the peer closes it or the server closes; then close it.

        A broken stream ends like a closed one; nothing is raised (but cancellation).
        """
        peer = self._attach(StreamPipe(reader, writer))
        try:
            await asyncio.shield(peer.done)
        finally:
            await self._finish(peer)

    async def close(self, grace: float | None = 5.0) -> None:
        """Stop listening, answer new requests UNAVAILABLE, give running calls ``grace`` seconds, close.

        Calls still running after ``grace`` are cancelled (their clients see the connection
        close). Unix socket files this server created are removed. Idempotent; never raises.
        """
        self._closing = True
        for listener in self._listeners:
            listener.close()
        peers = list(self._peers)
        for peer in peers:
            peer.conn.close()
        calls = [task for peer in peers for task in peer.calls]
        if calls:
            await asyncio.wait(calls, timeout=grace)
        for peer in peers:
            await self._finish(peer)
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()
        for path, inode in self._socket_files:
            remove_socket_file(path, inode)
        self._socket_files.clear()

    def _attach(self, pipe: Pipe) -> _Peer:
        conn = ServerConnection(max_message_size=self._limit)
        if self._closing:
            conn.close()
        peer = _Peer(self, pipe, conn)
        self._peers.add(peer)
        pipe.start(peer)
        return peer

    async def _finish(self, peer: _Peer) -> None:
        for task in peer.calls:
            task.cancel()
        if peer.calls:
            await asyncio.wait(list(peer.calls))
        peer.pipe.close()
        await peer.pipe.wait_closed()

    def _start_call(self, peer: _Peer, event: RequestReceived) -> None:
        task = asyncio.get_running_loop().create_task(self._run_call(peer, event))
        peer.calls.add(task)
        task.add_done_callback(peer.calls.discard)

    async def _run_call(self, peer: _Peer, event: RequestReceived) -> None:
        stream_id = event.stream_id
        started = time.monotonic()
        try:
            call = self._router.prepare(event)
            payload = await self._invoke(call)
        except asyncio.CancelledError:
            raise  # the peer went away or the server is closing: nobody to answer
        except Exception as exc:
            code, message = status_for_exception(exc)
            if not isinstance(exc, RpcError):
                _log.exception("event=handler-failed stream=%d", stream_id)
            peer.pipe.write(peer.conn.send_response(stream_id, code, message))
        else:
            code = Code.OK
            peer.pipe.write(peer.conn.send_response(stream_id, code, "", payload))
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("event=rpc method=%s/%s code=%s ms=%.1f", event.request.service, event.request.method,
                       Code(code).name, (time.monotonic() - started) * 1000)
        await peer.pipe.drain()

    async def _invoke(self, call: PreparedCall) -> bytes:
        context = call.context
        if context.deadline is None:
            result = call.invoke()
            if inspect.isawaitable(result):
                result = await result
            return call.encode(result)
        remaining = context.deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceededError(f"{context.full_method}: deadline exceeded")
        try:
            async with asyncio.timeout(remaining) as scope:
                result = call.invoke()
                if inspect.isawaitable(result):
                    result = await result
        except TimeoutError as exc:
            if not scope.expired():
                raise
            context.cancelled = True
            raise DeadlineExceededError(f"{context.full_method}: deadline exceeded") from exc
        return call.encode(result)

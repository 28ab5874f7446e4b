"""A blocking, selectors-based ttRPC server for the guest agent; nothing it imports pulls in asyncio."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import selectors
import sys
import threading
import time
from collections.abc import Callable
from functools import partial

from kata.errors import RpcError
from kata.ttrpc._channel import Channel, FdStream, Pending, SocketStream, Stream
from kata.ttrpc._workers import WorkerPool
from kata.ttrpc.dispatch import Router
from kata.ttrpc.events import RequestReceived, SessionRestarted, StreamFailed
from kata.ttrpc.frames import MAX_MESSAGE_SIZE
from kata.ttrpc.sockets import remove_socket_file, socket_file_inode
from kata.ttrpc.status import Code, DeadlineExceededError, InternalError, status_for_exception

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket  # only listeners need it: a guest serving a virtio-serial port never imports it
    from types import TracebackType

__all__ = ["BlockingServer"]

_READ_SIZE = 256 * 1024
# While shutting down, look this often whether the last calls finished.
_STOP_POLL_SECONDS = 0.02
# epoll cannot wait for years; a far deadline just means waking up once in a while.
_MAX_WAIT_SECONDS = 3600.0
_WORKER_JOIN_SECONDS = 1.0

Report = Callable[[str], None]


def _report_to_stderr(message: str) -> None:
    sys.stderr.write(f"ttrpc: {message}\n")


class BlockingServer:
    """Serves a :class:`Router` on listening sockets and already open byte streams.

    One thread (the caller of :meth:`serve_forever`) reads every stream; each request
    runs on a worker thread, so handlers may block; responses are written under a
    per-stream lock. ``timeout_nano`` becomes a deadline: when it passes, the call is
    answered DEADLINE_EXCEEDED and its context marked cancelled (the thread itself
    cannot be stopped; its late result is dropped). A "reconnectable" stream such as a
    virtio-serial port reads end-of-file while the host is away and works again later:
    the server then starts a fresh session and polls with back-off instead of spinning.
    """

    def __init__(
        self,
        router: Router,
        *,
        max_message_size: int = MAX_MESSAGE_SIZE,
        max_workers: int = 256,
        hangup_backoff: tuple[float, float] = (0.005, 0.1),
        report: Report | None = None,
    ) -> None:
        self._router = router
        self._limit = max_message_size
        self._backoff_min, self._backoff_max = hangup_backoff
        self._report = report or _report_to_stderr
        self._pool = WorkerPool(max_workers)
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe()
        for fd in (self._wake_read, self._wake_write):
            os.set_blocking(fd, False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, self._drain_wakeups)
        self._state_lock = threading.Lock()  # guards _todo, _serving, _closed
        self._todo: list[Callable[[], None]] = []
        self._adopted: list[socket.socket | Stream] = []
        self._serving = False
        self._closed = False
        self._done = threading.Event()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_order = itertools.count()
        self._listeners: list[socket.socket] = []
        self._socket_files: list[tuple[str, int | None]] = []
        self._channels: set[Channel] = set()
        self._stop_at: float | None = None

    def __enter__(self) -> BlockingServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown(grace=0.0)

    def add_listener(self, sock: socket.socket) -> None:
        """Accept connections on the listening ``sock``; the server owns it from now on. Thread-safe.

        The server closes it when it stops and removes its unix socket file, if any.

        Raises:
            RuntimeError: the server is closed.
        """
        self._adopt(sock, partial(self._register_listener, sock))

    def add_stream(self, read_fd: int, write_fd: int | None = None, *, reconnectable: bool = True) -> None:
        """Serve an already open byte stream (``write_fd`` defaults to ``read_fd``); the server owns the fds.

        With ``reconnectable``, end-of-file means "peer away for now" (virtio-serial):
        pending calls are dropped and the stream is polled with back-off. Thread-safe.

        Raises:
            RuntimeError: the server is closed.
        """
        stream = FdStream(read_fd, write_fd)
        self._adopt(stream, partial(self._open_channel, stream, reconnectable))

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown`; then close every stream and listener.

        Raises:
            RuntimeError: the server is serving already or closed.
        """
        with self._state_lock:
            if self._serving or self._closed:
                raise RuntimeError("server is serving already or closed")
            self._serving = True
        try:
            while not self._finished():
                timeout = self._run_due()
                for key, _ in self._selector.select(timeout):
                    self._guarded(key.data)
        finally:
            self._teardown()
            self._done.set()

    def shutdown(self, grace: float = 5.0, *, wait: bool = True) -> None:
        """Stop: close listeners, answer new requests UNAVAILABLE, give running calls ``grace`` seconds.

        Thread-safe and idempotent. With ``wait`` (do not use it from a handler) it
        returns once :meth:`serve_forever` has returned; a server that never served is
        simply closed.
        """
        with self._state_lock:
            if self._closed:
                return
            serving = self._serving
            self._todo.append(partial(self._begin_stop, grace))
        if not serving:
            self._teardown()
            return
        self._wake()
        if wait:
            self._done.wait()

    # The serving thread's side.

    def _adopt(self, resource: socket.socket | Stream, register: Callable[[], None]) -> None:
        """Own ``resource``; register it now if not serving yet, else on the serving thread."""
        with self._state_lock:
            if self._closed:
                raise RuntimeError("server is closed")
            self._adopted.append(resource)  # closed at teardown, whatever became of it
            if not self._serving:
                register()
                return
            self._todo.append(register)
        self._wake()

    def _wake(self) -> None:
        with self._state_lock:
            if not self._closed:
                with contextlib.suppress(BlockingIOError):  # a wake-up is pending already
                    os.write(self._wake_write, b"\0")

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def _run_due(self) -> float | None:
        with self._state_lock:
            todo, self._todo = self._todo, []
        for callback in todo:
            self._guarded(callback)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            self._guarded(heapq.heappop(self._timers)[2])
        timeout = min(self._timers[0][0] - now, _MAX_WAIT_SECONDS) if self._timers else None
        if self._stop_at is not None:
            timeout = _STOP_POLL_SECONDS if timeout is None else min(timeout, _STOP_POLL_SECONDS)
        return timeout

    def _guarded(self, callback: Callable[[], None]) -> None:
        """Run a serving-thread callback; a bug there costs at most its own stream, never the server."""
        try:
            callback()
        except Exception as exc:
            self._report_exception("serving-loop", exc)
            channel = getattr(callback, "args", (None,))[0]
            if isinstance(channel, Channel) and channel in self._channels:
                self._drop_channel(channel)

    def _drop_channel(self, channel: Channel) -> None:
        self._channels.discard(channel)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(channel.stream.read_fd)
        channel.close()

    def _call_at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._timer_order), callback))

    def _finished(self) -> bool:
        if self._stop_at is None:
            return False
        busy = any(channel.calls for channel in self._channels)
        return not busy or time.monotonic() >= self._stop_at

    def _begin_stop(self, grace: float) -> None:
        if self._stop_at is not None:
            return
        self._stop_at = time.monotonic() + grace
        for listener in self._listeners:
            self._selector.unregister(listener)
        self._close_listeners()
        for channel in self._channels:
            with channel.lock:
                channel.conn.close()

    def _teardown(self) -> None:
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._wake_write)
        self._selector.close()
        os.close(self._wake_read)
        self._close_listeners()
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        for resource in self._adopted:
            resource.close()  # what never got registered, or broke before
        self._adopted.clear()
        self._timers.clear()
        self._pool.shutdown(_WORKER_JOIN_SECONDS)

    def _close_listeners(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        for path, inode in self._socket_files:
            remove_socket_file(path, inode)
        self._socket_files.clear()

    def _register_listener(self, sock: socket.socket) -> None:
        import socket  # loaded already: the caller made ``sock``

        sock.setblocking(False)
        name = sock.getsockname() if sock.family == socket.AF_UNIX else None
        if isinstance(name, str):
            self._socket_files.append((name, socket_file_inode(name)))
        self._listeners.append(sock)
        self._selector.register(sock, selectors.EVENT_READ, partial(self._accept, sock))

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._report(f"event=accept-failed error={exc!r}")
            return
        self._open_channel(SocketStream(sock), False)

    def _open_channel(self, stream: Stream, reconnectable: bool) -> None:
        channel = Channel(stream, limit=self._limit, reconnectable=reconnectable)
        if self._stop_at is not None:
            channel.conn.close()
        self._channels.add(channel)
        self._selector.register(stream.read_fd, selectors.EVENT_READ, partial(self._on_readable, channel))

    def _on_readable(self, channel: Channel) -> None:
        try:
            data = channel.stream.read(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._on_hangup(channel)
            return
        channel.backoff = 0.0
        with channel.lock:
            events = channel.conn.receive_data(data)
        for event in events:
            if isinstance(event, RequestReceived):
                self._start_call(channel, event)
            elif isinstance(event, StreamFailed):
                self._report(f"event=stream-rejected stream={event.stream_id} error={event.error}")
                channel.reject(event.stream_id, event.error)
            elif isinstance(event, SessionRestarted):
                channel.restart()
            else:
                self._report(f"event=protocol-violation error={event.error}")

    def _on_hangup(self, channel: Channel) -> None:
        if not channel.reconnectable or self._stop_at is not None:
            self._drop_channel(channel)
            return
        self._selector.unregister(channel.stream.read_fd)
        channel.reset()
        channel.backoff = min(max(channel.backoff * 2, self._backoff_min), self._backoff_max)
        self._call_at(time.monotonic() + channel.backoff, partial(self._rearm, channel))

    def _rearm(self, channel: Channel) -> None:
        if channel in self._channels:
            self._selector.register(
                channel.stream.read_fd, selectors.EVENT_READ, partial(self._on_readable, channel)
            )

    def _start_call(self, channel: Channel, event: RequestReceived) -> None:
        try:
            call = self._router.prepare(event)
        except RpcError as exc:
            channel.reject(event.stream_id, exc)
            return
        deadline = call.context.deadline
        if deadline is not None and deadline <= time.monotonic():
            channel.reject(
                event.stream_id, DeadlineExceededError(f"{call.context.full_method}: deadline exceeded")
            )
            return
        pending = Pending(event.stream_id, call)
        with channel.lock:
            channel.calls[event.stream_id] = pending
        if deadline is not None:
            self._call_at(deadline, partial(self._expire, channel, pending))
        self._pool.submit(partial(self._run, channel, pending))

    def _expire(self, channel: Channel, pending: Pending) -> None:
        context = pending.call.context
        if channel.answer(pending, Code.DEADLINE_EXCEEDED, f"{context.full_method}: deadline exceeded"):
            context.cancelled = True

    # A worker thread's side.

    def _run(self, channel: Channel, pending: Pending) -> None:
        call = pending.call
        try:
            result = call.invoke()
            if hasattr(result, "__await__"):
                close = getattr(result, "close", None)
                if close is not None:
                    close()  # a never-awaited coroutine would warn
                raise InternalError(
                    f"{call.context.full_method}: handler is asynchronous; this server is blocking"
                )
            payload = call.encode(result)
        except Exception as exc:
            code, message = status_for_exception(exc)
            if not isinstance(exc, RpcError):
                self._report_exception(call.context.full_method, exc)
            channel.answer(pending, code, message)
            return
        channel.answer(pending, Code.OK, "", payload)

    def _report_exception(self, where: str, exc: Exception) -> None:
        import traceback  # only on this unhappy path: the guest pays for every import

        trace = "".join(traceback.format_exception(exc)).rstrip()
        self._report(f"event=unexpected-error where={where} error={exc!r}\n{trace}")

"""One byte stream served by the blocking server: protocol state, pending calls, locked writes."""

from __future__ import annotations

import contextlib
import os
import select
import threading

from kata.ttrpc.connection import ServerConnection
from kata.ttrpc.dispatch import PreparedCall
from kata.ttrpc.status import status_for_exception

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

__all__ = ["Channel", "FdStream", "Pending", "SocketStream", "Stream"]

# While a write waits for room, check this often whether the peer went away.
_WRITE_POLL_SECONDS = 0.1


class Stream:
    """A non-blocking byte stream: a connected socket or a pair of file descriptors."""

    read_fd: int
    write_fd: int

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; b"" at end of stream. Raises OSError (BlockingIOError: nothing yet)."""
        raise NotImplementedError

    def write(self, data: memoryview) -> int:
        """Write some of ``data``; return how much. Raises OSError (BlockingIOError: no room yet)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the stream; idempotent. Never raises."""
        raise NotImplementedError


class SocketStream(Stream):
    """A connected stream socket (unix, vsock)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self.read_fd = self.write_fd = sock.fileno()

    def read(self, size: int) -> bytes:
        return self._sock.recv(size)

    def write(self, data: memoryview) -> int:
        return self._sock.send(data)

    def close(self) -> None:
        self._sock.close()


class FdStream(Stream):
    """An already open file descriptor (or a read/write pair), e.g. a virtio-serial port."""

    def __init__(self, read_fd: int, write_fd: int | None = None) -> None:
        self.read_fd = read_fd
        self.write_fd = read_fd if write_fd is None else write_fd
        self._closed = False
        for fd in {self.read_fd, self.write_fd}:
            os.set_blocking(fd, False)

    def read(self, size: int) -> bytes:
        return os.read(self.read_fd, size)

    def write(self, data: memoryview) -> int:
        return os.write(self.write_fd, data)

    def close(self) -> None:
        if self._closed:
            return  # never close a number the process may have reused meanwhile
        self._closed = True
        for fd in {self.read_fd, self.write_fd}:
            with contextlib.suppress(OSError):
                os.close(fd)


class Pending:
    """A call handed to a worker and not answered yet."""

    __slots__ = ("call", "stream_id")

    def __init__(self, stream_id: int, call: PreparedCall) -> None:
        self.stream_id = stream_id
        self.call = call


class Channel:
    """A served byte stream. Worker threads answer calls through it; every write holds ``lock``."""

    __slots__ = (
        "backoff",
        "calls",
        "closed",
        "conn",
        "generation",
        "limit",
        "lock",
        "reconnectable",
        "stream",
    )

    def __init__(self, stream: Stream, *, limit: int, reconnectable: bool) -> None:
        self.stream = stream
        self.limit = limit
        self.reconnectable = reconnectable
        self.conn = ServerConnection(max_message_size=limit, restartable=reconnectable)
        self.calls: dict[int, Pending] = {}
        self.lock = threading.Lock()
        self.closed = False
        # Bumped (by the serving thread, before it takes the lock) whenever the
        # peer goes away, so a writer stuck waiting for room gives up.
        self.generation = 0
        self.backoff = 0.0

    def reset(self) -> None:
        """The peer went away: orphan pending calls and start a fresh protocol session."""
        self.generation += 1
        with self.lock:
            self._orphan_calls()
            self.conn = ServerConnection(max_message_size=self.limit, restartable=self.reconnectable)

    def restart(self) -> None:
        """A new peer started over without a hang-up in between: orphan the old session's calls."""
        self.generation += 1
        with self.lock:
            self._orphan_calls()

    def close(self) -> None:
        """Orphan pending calls and close the stream. Never raises."""
        self.closed = True
        self.generation += 1
        with self.lock:
            self._orphan_calls()
            self.stream.close()

    def answer(self, pending: Pending, code: int, message: str = "", payload: bytes = b"") -> bool:
        """Send the response for ``pending`` unless it was answered or orphaned already."""
        with self.lock:
            if self.calls.get(pending.stream_id) is not pending:
                return False
            del self.calls[pending.stream_id]
            self.write_locked(self.conn.send_response(pending.stream_id, code, message, payload))
            return True

    def reject(self, stream_id: int, error: BaseException) -> None:
        """Answer a stream that never became a call with the status for ``error``."""
        with self.lock:
            code, message = status_for_exception(error)
            self.write_locked(self.conn.send_response(stream_id, code, message))

    def write_locked(self, data: bytes) -> None:
        """Write all of ``data`` (caller holds ``lock``); dropped if the peer goes away. Never raises."""
        generation = self.generation
        view = memoryview(data)
        while view:
            try:
                view = view[self.stream.write(view) :]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                return  # peer gone: the serving thread sees it on its next read
            if view:
                if self.generation != generation:
                    return
                poller = select.poll()
                poller.register(self.stream.write_fd, select.POLLOUT)
                poller.poll(_WRITE_POLL_SECONDS * 1000)

    def _orphan_calls(self) -> None:
        for pending in self.calls.values():
            pending.call.context.cancelled = True
        self.calls.clear()

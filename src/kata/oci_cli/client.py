"""A small blocking ttRPC client of the sandbox daemon's Task service (one call at a time), so the
per-verb processes import neither asyncio nor the sandbox library."""

from __future__ import annotations

import socket
from types import TracebackType
from typing import TypeVar

from google.protobuf.message import Message

from kata.oci_cli.layout import short_path
from kata.ttrpc.connection import ClientConnection
from kata.ttrpc.events import ResponseReceived
from kata.ttrpc.status import ConnectionClosedError, DeadlineExceededError, error_for_status

__all__ = ["TASK_SERVICE", "TaskClient"]

TASK_SERVICE = "containerd.task.v2.Task"  # kata.protocols.services.TASK_SERVICE, without its imports
CALL_TIMEOUT = 60.0
M = TypeVar("M", bound=Message)
class TaskClient:
    """A connection to the daemon's socket ``path``; ``call`` sends one request and waits for its answer."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._connection = ClientConnection()

    @classmethod
    def connect(cls, path: str, timeout: float = 5.0) -> TaskClient:
        """Connect to the daemon listening on ``path``.

        Raises:
            OSError: nothing listens there (ENOENT, ECONNREFUSED), or the connect timed out.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            with short_path(path) as address:
                sock.connect(address)
        except OSError:
            sock.close()
            raise
        return cls(sock)

    def __enter__(self) -> TaskClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Hang up."""
        self._sock.close()

    def call(self, method: str, request: Message, response_type: type[M], timeout: float | None = CALL_TIMEOUT) -> M:
        """``Task/method(request)``; ``timeout`` None waits as long as it takes (Wait).

        Raises:
            RpcError: the daemon answered with an error status (its gRPC code's subclass).
            DeadlineExceededError: no answer within ``timeout`` s.
            ConnectionClosedError: the daemon hung up (it exited, or its VM went away with it).
        """
        timeout_nano = int(timeout * 1e9) if timeout else 0
        stream_id, frame = self._connection.send_request(TASK_SERVICE, method, request.SerializeToString(),
                                                         timeout_nano=timeout_nano)
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(frame)
            while True:
                data = self._sock.recv(65536)
                if not data:
                    raise ConnectionClosedError(f"{method}: the sandbox daemon hung up")
                for event in self._connection.receive_data(data):
                    if event.stream_id != stream_id:
                        continue
                    if not isinstance(event, ResponseReceived):
                        raise event.error
                    if event.code:
                        raise error_for_status(event.code, event.message)
                    return response_type.FromString(event.payload)
        except TimeoutError:
            self._connection.abandon(stream_id)
            raise DeadlineExceededError(f"{method}: no answer from the sandbox daemon in {timeout} s") from None
        except OSError as exc:
            raise ConnectionClosedError(f"{method}: sandbox daemon connection: {exc.strerror or exc}") from exc

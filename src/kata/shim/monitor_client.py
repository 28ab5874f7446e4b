"""A blocking client of a shim's management socket (kata-runtime's network and iptables verbs): one
HTTP/1.1 request per connection, over the standard library's socket only (each verb is a fresh process)."""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass

from kata.errors import KataError, ProtocolError

__all__ = ["MONITOR_SOCKET", "MonitorAnswer", "call", "monitor_socket"]

MONITOR_SOCKET = "shim-monitor.sock"  # kata.shim.monitor's name (not imported: it pulls in the sandbox library)


@dataclass(frozen=True)
class MonitorAnswer:
    """A response: status code, reason phrase and body."""

    status: int
    reason: str
    body: bytes

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        """The body as one line of text (an error's message)."""
        return " ".join(self.body.decode(errors="replace").split()) or self.reason


def monitor_socket(root: str | os.PathLike[str], sandbox_id: str) -> str:
    """The shim-monitor socket of sandbox ``sandbox_id`` under the state ``root``."""
    return os.path.join(root, sandbox_id, MONITOR_SOCKET)


def _request(method: str, target: str, body: bytes) -> bytes:
    head = (f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n")
    if body:
        head += "Content-Type: application/octet-stream\r\n"
    return (head + "\r\n").encode("latin-1") + body


def _parse(data: bytes) -> MonitorAnswer:
    head, separator, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not separator or not version.startswith("HTTP/1.") or not code.isdigit():
        raise ProtocolError(f"malformed HTTP response {status_line[:80]!r}")
    return MonitorAnswer(int(code), reason, body)


def call(path: str, method: str, target: str, body: bytes = b"", *, timeout: float = 30.0) -> MonitorAnswer:
    """Send one request to the socket at ``path`` and read the answer (the server closes after it).

    Raises:
        FileNotFoundError, ConnectionRefusedError: no shim serves the socket.
        KataError: no answer within ``timeout`` seconds.
        ProtocolError: the answer is not HTTP.
        OSError: the socket failed otherwise.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        try:
            # A server refusing a body before reading it all (413) closes early: its answer is still there.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(_request(method, target, body))
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError as exc:
            raise KataError(f"{method} {target}: the shim did not answer within {timeout:g} s") from exc
    return _parse(b"".join(chunks))

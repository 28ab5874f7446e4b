"""A fake QMP server (thread, blocking sockets) and, run as a script, a fake QEMU built on it."""

from __future__ import annotations

import array
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["FakeQmpServer", "QmpFailureError", "Reply", "main"]

Reply = tuple[object, list[tuple[str, dict[str, Any]]]]  # return value, events to send after it
Handler = Callable[[dict[str, Any]], Reply]


class QmpFailureError(Exception):
    """Raised by a handler: the command answers ``{"error": {"class": ..., "desc": ...}}``."""

    def __init__(self, error_class: str, desc: str) -> None:
        super().__init__(desc)
        self.error_class = error_class
        self.desc = desc


def _ok(_: dict[str, Any]) -> Reply:
    return {}, []


class FakeQmpServer:
    """Answers QMP on a unix socket: greeting, capabilities, then ``handlers`` (default: empty return).

    Records every command with its arguments in ``commands`` and every passed fd in ``fds``.
    """

    def __init__(self, path: str, handlers: dict[str, Handler] | None = None) -> None:
        self.path = path
        self.handlers: dict[str, Handler] = {"qmp_capabilities": _ok, **(handlers or {})}
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.fds: list[int] = []
        self.quit = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(4)
        self._conn: socket.socket | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> FakeQmpServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and close every socket and received fd."""
        self.quit.set()
        for sock in (self._conn, self._listener):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self._thread.join(5)
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()

    def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        """Send an event to the connected client."""
        now = time.time()
        self._send({"event": name, "data": data or {},
                    "timestamp": {"seconds": int(now), "microseconds": int(now % 1 * 1e6)}})

    def names(self) -> list[str]:
        """The commands received so far, in order."""
        return [name for name, _ in self.commands]

    def _send(self, message: dict[str, Any]) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.sendall(json.dumps(message).encode() + b"\r\n")

    def _serve(self) -> None:
        while not self.quit.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._conn = conn
            self._send({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": "fake"},
                                "capabilities": []}})
            self._session(conn)

    def _receive(self, conn: socket.socket) -> bytes:
        fds = array.array("i")
        try:
            data, ancdata, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(16 * fds.itemsize))
        except OSError:
            return b""
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        self.fds.extend(fds)
        return data

    def _session(self, conn: socket.socket) -> None:
        buffer, decoder = "", json.JSONDecoder()
        while chunk := self._receive(conn):
            buffer += chunk.decode()
            while buffer.strip():
                buffer = buffer.lstrip()
                try:
                    message, end = decoder.raw_decode(buffer)
                except ValueError:
                    break
                buffer = buffer[end:]
                self._answer(message)

    def _answer(self, message: dict[str, Any]) -> None:
        name, args = message["execute"], message.get("arguments", {})
        self.commands.append((name, args))
        handler = self.handlers.get(name, _ok)
        try:
            value, events = handler(args)
            self._send({"return": value, "id": message.get("id")})
        except QmpFailureError as exc:
            self._send({"error": {"class": exc.error_class, "desc": exc.desc}, "id": message.get("id")})
            return
        for event, data in events:
            self.emit(event, data)


def _qmp_path(argv: list[str]) -> str:
    for flag, value in itertools.pairwise(argv):
        if flag == "-chardev" and value.startswith("socket,id=qmp,"):
            return next(p[5:] for p in value.split(",") if p.startswith("path="))
    raise SystemExit("fake qemu: no QMP chardev")


def main(argv: list[str]) -> int:
    """A fake QEMU: ``FAKE_QEMU_MODE`` = ok | fail | stubborn (ignores quit and SIGTERM) | silent."""
    mode = os.environ.get("FAKE_QEMU_MODE", "ok")
    if mode == "fail":
        print("qemu-system-x86_64: -kernel /nope: could not open kernel file", file=sys.stderr)
        return 1
    if mode == "silent":  # never answers: a QEMU that hangs before its monitor is up
        time.sleep(3600)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    path = _qmp_path(argv)
    stopped = threading.Event()

    def quit_command(_: dict[str, Any]) -> Reply:
        if mode != "stubborn":
            threading.Timer(0.05, stopped.set).start()
        return {}, [("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})]

    def status(_: dict[str, Any]) -> Reply:
        return {"status": "running", "running": True, "singlestep": False}, []

    server = FakeQmpServer(path, {"quit": quit_command, "query-status": status}).start()
    stopped.wait()
    server.close()
    os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

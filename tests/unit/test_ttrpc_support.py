"""Shared helpers for the ttRPC tests: a test service, servers on background threads, leak checks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kata.protocols.pb import ttrpc_pb2
from kata.ttrpc import BlockingServer, CallContext, Code, MethodSpec, Router, error_for_status, listen_unix
from kata.ttrpc.aio import AsyncServer

SERVICE = "test.Echo"
SERVER_KINDS = ("asyncio", "blocking")
KeyValue = ttrpc_pb2.KeyValue
StringList = ttrpc_pb2.StringList


# The test service. Each method takes a KeyValue and answers a StringList.


def echo(request: KeyValue, context: CallContext) -> StringList:
    return StringList(list=[request.key, request.value])


def fail(request: KeyValue, context: CallContext) -> StringList:
    """Raise what ``key`` names: a status code name, "crash" or "not-implemented"."""
    if request.key == "crash":
        raise RuntimeError(request.value)
    if request.key == "not-implemented":
        raise NotImplementedError(request.value)
    raise error_for_status(Code[request.key], request.value)


def metadata(request: KeyValue, context: CallContext) -> StringList:
    return StringList(list=[f"{key}={','.join(values)}" for key, values in sorted(context.metadata.items())])


def deadline(request: KeyValue, context: CallContext) -> StringList:
    remaining = context.time_remaining()
    return StringList(list=["none" if remaining is None else f"{remaining:.3f}"])


def big(request: KeyValue, context: CallContext) -> StringList:
    return StringList(list=["x" * int(request.value)])


def wrong_type(request: KeyValue, context: CallContext) -> KeyValue:
    return request


def sleep_blocking(request: KeyValue, context: CallContext) -> StringList:
    """Sleep ``value`` seconds, stopping early once the server cancels the call."""
    end = time.monotonic() + float(request.value)
    while time.monotonic() < end and not context.cancelled:
        time.sleep(0.005)
    return StringList(list=["cancelled" if context.cancelled else "slept"])


async def sleep_async(request: KeyValue, context: CallContext) -> StringList:
    await asyncio.sleep(float(request.value))
    return StringList(list=["slept"])


async def echo_async(request: KeyValue, context: CallContext) -> StringList:
    return echo(request, context)


def make_router(kind: str) -> Router:
    """The test service; on the asyncio server some handlers are coroutines, others plain functions."""
    asynchronous = kind == "asyncio"
    table: dict[str, Callable[[Any, CallContext], Any]] = {
        "Echo": echo,
        "EchoAsync": echo_async if asynchronous else echo,
        "Fail": fail,
        "Metadata": metadata,
        "Deadline": deadline,
        "Big": big,
        "Sleep": sleep_async if asynchronous else sleep_blocking,
    }
    methods: dict[str, MethodSpec] = {
        name: (KeyValue, StringList, handler) for name, handler in table.items()
    }
    methods["WrongType"] = (KeyValue, StringList, wrong_type)
    router = Router()
    router.register(SERVICE, methods)
    return router


# Servers on background threads, reachable through a unix socket path.


class ServerHandle:
    """A server running on a background thread: its socket path and a way to stop it early."""

    def __init__(self, path: str, stop: Callable[[float], None]) -> None:
        self.path = path
        self._stop = stop
        self.stopped = False

    def stop(self, grace: float = 1.0) -> None:
        """Begin a graceful stop (returns at once; the context manager waits for the end)."""
        if not self.stopped:
            self.stopped = True
            self._stop(grace)


@contextlib.contextmanager
def running_server(kind: str, router: Router | None = None, **options: Any) -> Iterator[ServerHandle]:
    """Serve ``router`` (default: the test service) with the ``kind`` server on a background thread."""
    router = router or make_router(kind)
    with tempfile.TemporaryDirectory(prefix="ttrpc-test-") as tmp:
        path = os.path.join(tmp, "server.sock")
        runner = _blocking_server if kind == "blocking" else _asyncio_server
        with runner(router, path, options) as handle:
            yield handle


@contextlib.contextmanager
def _blocking_server(router: Router, path: str, options: dict[str, Any]) -> Iterator[ServerHandle]:
    options.setdefault("report", lambda message: None)
    server = BlockingServer(router, **options)
    server.add_listener(listen_unix(path))
    thread = threading.Thread(target=server.serve_forever, name="test-blocking-server")
    thread.start()
    handle = ServerHandle(path, lambda grace: server.shutdown(grace=grace, wait=False))
    try:
        yield handle
    finally:
        handle.stop()
        thread.join()


@contextlib.contextmanager
def _asyncio_server(router: Router, path: str, options: dict[str, Any]) -> Iterator[ServerHandle]:
    started = threading.Event()
    loop_box: list[asyncio.AbstractEventLoop] = []
    grace_box: list[float] = []
    stop = asyncio.Event()
    failure: list[BaseException] = []

    async def serve() -> None:
        server = AsyncServer(router, **options)
        await server.listen_unix(path)
        loop_box.append(asyncio.get_running_loop())
        started.set()
        await stop.wait()
        await server.close(grace=grace_box[0])

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:
            failure.append(exc)
            started.set()

    def begin_stop(grace: float) -> None:
        grace_box.append(grace)
        loop_box[0].call_soon_threadsafe(stop.set)

    thread = threading.Thread(target=run, name="test-asyncio-server")
    thread.start()
    started.wait()
    handle = ServerHandle(path, begin_stop)
    try:
        if failure:
            raise failure[0]
        yield handle
    finally:
        if loop_box:
            handle.stop()
        thread.join()
        if failure:
            raise failure[0]


# Raw frames, for talking to a server byte by byte.

HEADER = struct.Struct(">IIBB")


def request_frame(
    stream_id: int,
    method: str,
    request: KeyValue | None = None,
    *,
    service: str = SERVICE,
    timeout_nano: int = 0,
) -> bytes:
    body = ttrpc_pb2.Request(
        service=service,
        method=method,
        payload=(request or KeyValue()).SerializeToString(),
        timeout_nano=timeout_nano,
    ).SerializeToString()
    return HEADER.pack(len(body), stream_id, 1, 0) + body


def read_frame(sock: socket.socket) -> tuple[int, int, int, bytes]:
    """One frame (stream id, type, flags, payload) from a blocking socket; raises EOFError at the end."""
    length, stream_id, frame_type, flags = HEADER.unpack(read_exactly(sock, HEADER.size))
    return stream_id, frame_type, flags, read_exactly(sock, length)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise EOFError(f"stream ended after {len(chunks)} of {size} bytes")
        chunks += chunk
    return bytes(chunks)


def read_response(sock: socket.socket) -> tuple[int, ttrpc_pb2.Response]:
    stream_id, frame_type, flags, payload = read_frame(sock)
    assert (frame_type, flags) == (2, 0)
    return stream_id, ttrpc_pb2.Response.FromString(payload)


@contextlib.contextmanager
def raw_connection(path: str, timeout: float = 10.0) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        yield sock
    finally:
        sock.close()


# Leak checks: no threads, sockets or other fds left behind by a test.


def _socket_fds() -> set[int]:
    found = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}").startswith(("socket:", "pipe:")):
                found.add(int(name))
    return found


@contextlib.contextmanager
def no_stray_threads_or_sockets(settle: float = 2.0) -> Iterator[None]:
    """Fail if the body leaves threads, sockets or pipes behind (after ``settle`` seconds of grace)."""
    threads = set(threading.enumerate())
    fds = _socket_fds()
    yield
    deadline = time.monotonic() + settle
    while True:
        extra_threads = set(threading.enumerate()) - threads
        extra_fds = _socket_fds() - fds
        if not (extra_threads or extra_fds) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not extra_threads, f"threads left behind: {extra_threads}"
    assert not extra_fds, f"sockets or pipes left behind: {sorted(extra_fds)}"

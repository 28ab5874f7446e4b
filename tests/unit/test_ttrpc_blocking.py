"""The blocking guest server: no asyncio import, threads for handlers, a virtio-serial-like stream."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

from kata.protocols.pb import ttrpc_pb2
from kata.ttrpc import BlockingServer, CallContext, Code, Router, listen_unix
from kata.ttrpc._workers import WorkerPool
from tests.unit.test_ttrpc_support import (
    HEADER,
    SERVICE,
    KeyValue,
    StringList,
    make_router,
    no_stray_threads_or_sockets,
    raw_connection,
    read_response,
    request_frame,
    running_server,
)


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    with no_stray_threads_or_sockets():
        yield


GUEST_PROGRAM = """
import os, socket, struct, sys, threading
from kata.protocols.pb import ttrpc_pb2
from kata.ttrpc import BlockingServer, Router
import kata.ttrpc.blocking

router = Router()
router.register("t.S", {"M": (ttrpc_pb2.KeyValue, ttrpc_pb2.KeyValue, lambda request, context: request)})
host, guest = socket.socketpair()
server = BlockingServer(router)
server.add_stream(os.dup(guest.fileno()), reconnectable=False)
guest.close()
thread = threading.Thread(target=server.serve_forever)
thread.start()
body = ttrpc_pb2.Request(service="t.S", method="M", payload=b"\\x0a\\x01k").SerializeToString()
host.sendall(struct.pack(">IIBB", len(body), 1, 1, 0) + body)
answer = host.recv(1024)
assert answer[8:10] == b"\\x02\\x00", answer
server.shutdown()
thread.join()
host.close()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {sys.argv[1]} | set(sys.argv[2:]))
print(" ".join(heavy))
"""


def test_guest_server_never_imports_asyncio() -> None:
    # asyncio alone costs ~0.6 s of guest start-up under TCG; concurrent.futures,
    # logging, inspect and dataclasses are its expensive companions.
    result = subprocess.run(
        [sys.executable, "-c", GUEST_PROGRAM, "asyncio", "concurrent", "logging", "inspect", "dataclasses"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"the guest server imported: {result.stdout}"


def test_blocking_handlers_run_in_parallel_threads() -> None:
    barrier = threading.Barrier(5, timeout=5)

    def meet(request: KeyValue, context: CallContext) -> StringList:
        barrier.wait()  # would time out if handlers ran one after another
        return StringList(list=[threading.current_thread().name])

    router = Router()
    router.register(SERVICE, {"Meet": (KeyValue, StringList, meet)})
    with running_server("blocking", router) as server, raw_connection(server.path) as sock:
        sock.sendall(b"".join(request_frame(2 * i + 1, "Meet") for i in range(5)))
        responses = [read_response(sock)[1] for _ in range(5)]
    assert {response.status.code for response in responses} == {Code.OK}
    assert len({StringList.FromString(r.payload).list[0] for r in responses}) == 5


def test_async_handler_on_the_blocking_server_is_an_internal_error() -> None:
    async def coroutine_handler(request: KeyValue, context: CallContext) -> StringList:
        return StringList()

    router = Router()
    router.register(SERVICE, {"Async": (KeyValue, StringList, coroutine_handler)})
    with running_server("blocking", router) as server, raw_connection(server.path) as sock:
        sock.sendall(request_frame(1, "Async"))
        status = read_response(sock)[1].status
    assert status.code == Code.INTERNAL
    assert "handler is asynchronous" in status.message


def test_far_deadline_does_not_break_the_serving_loop() -> None:
    with running_server("blocking") as server, raw_connection(server.path) as sock:
        sock.sendall(request_frame(1, "Echo", timeout_nano=2**63 - 1))
        assert read_response(sock)[1].status.code == Code.OK
        sock.sendall(request_frame(3, "Echo"))
        assert read_response(sock)[1].status.code == Code.OK


def test_reports_name_the_problem() -> None:
    reports: list[str] = []
    with running_server("blocking", report=reports.append) as server, raw_connection(server.path) as sock:
        sock.sendall(request_frame(2, "Echo") + HEADER.pack(0, 3, 9, 0))
        sock.sendall(request_frame(5, "Fail", KeyValue(key="crash", value="disk on fire")))
        read_response(sock)
        read_response(sock)
    assert any("stream 2: client stream ids must be odd" in line for line in reports)
    assert any("unexpected unknown type 9 frame" in line for line in reports)
    assert any("RuntimeError('disk on fire')" in line and "Traceback" in line for line in reports)


def test_lifecycle_errors_and_socket_file_cleanup() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "agent.sock")
        server = BlockingServer(Router())
        server.add_listener(listen_unix(path))
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        with raw_connection(path):
            pass
        server.shutdown()
        thread.join()
        assert not os.path.exists(path)
        with pytest.raises(RuntimeError, match="closed"):
            server.serve_forever()
        with pytest.raises(RuntimeError, match="closed"):
            server.add_stream(0)
        server.shutdown()  # idempotent

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "never.sock")
        never_served = BlockingServer(Router())
        never_served.add_listener(listen_unix(path))
        host, guest = socket.socketpair()
        never_served.add_stream(guest.detach())
        never_served.shutdown()  # closes what it adopted: no socket is left open
        host.close()
        assert not os.path.exists(path)
        with pytest.raises(RuntimeError):
            never_served.serve_forever()


# A virtio-serial port reads end-of-file while the host is away and works again
# once it is back, without reopening. A FIFO behaves the same: while no writer
# has it open, poll() says POLLHUP and read() returns b"".


@contextlib.contextmanager
def fifo_server() -> Iterator[tuple[str, int]]:
    """A blocking server on a FIFO pair; yields the host's request FIFO path and response fd."""
    with tempfile.TemporaryDirectory() as tmp:
        requests, responses = os.path.join(tmp, "requests"), os.path.join(tmp, "responses")
        os.mkfifo(requests)
        os.mkfifo(responses)
        server = BlockingServer(make_router("blocking"), report=lambda message: None)
        # O_RDWR on the response FIFO: the guest side never sees EPIPE, like a serial port
        server.add_stream(os.open(requests, os.O_RDONLY | os.O_NONBLOCK), os.open(responses, os.O_RDWR))
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        host_reads = os.open(responses, os.O_RDONLY | os.O_NONBLOCK)
        try:
            yield requests, host_reads
        finally:
            server.shutdown()
            thread.join()
            os.close(host_reads)


def read_fd_response(fd: int, timeout: float = 5.0) -> tuple[int, ttrpc_pb2.Response]:
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(BlockingIOError):
            data += os.read(fd, 65536)
        if len(data) >= HEADER.size and len(data) >= HEADER.size + HEADER.unpack_from(data)[0]:
            length, stream_id, _, _ = HEADER.unpack_from(data)
            assert len(data) == HEADER.size + length
            return stream_id, ttrpc_pb2.Response.FromString(data[HEADER.size :])
        time.sleep(0.005)
    raise AssertionError("no response")


def test_reconnectable_stream_survives_host_hangups_without_spinning() -> None:
    with fifo_server() as (requests, host_reads):
        # host session 1: a slow call, then the host goes away before the answer
        host = os.open(requests, os.O_WRONLY)
        os.write(host, request_frame(1, "Sleep", KeyValue(value="0.3")))
        os.close(host)

        cpu = time.process_time()
        time.sleep(0.6)  # the host is away: the server must back off, not spin
        assert time.process_time() - cpu < 0.3

        # host session 2: stream ids start again at 1; the stale answer never shows up
        host = os.open(requests, os.O_WRONLY)
        try:
            os.write(host, request_frame(1, "Echo", KeyValue(key="again")))
            stream_id, response = read_fd_response(host_reads)
            assert (stream_id, response.status.code) == (1, Code.OK)
            assert StringList.FromString(response.payload).list == ["again", ""]
            time.sleep(0.3)
            with pytest.raises(BlockingIOError):
                os.read(host_reads, 1)
        finally:
            os.close(host)


def test_worker_pool_reuses_idle_threads_and_grows_for_blocked_ones() -> None:
    pool = WorkerPool(max_workers=8)
    done = threading.Semaphore(0)
    for _ in range(5):
        pool.submit(done.release)
        assert done.acquire(timeout=5)
        time.sleep(0.01)  # let the worker go idle again
    assert pool.size == 1
    gate = threading.Event()

    def blocked() -> None:
        gate.wait(5)
        done.release()

    for _ in range(4):
        pool.submit(blocked)  # each needs a thread of its own: the idle one plus three new
    gate.set()
    for _ in range(4):
        assert done.acquire(timeout=5)
    assert pool.size == 4
    assert pool.shutdown(timeout=5)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(done.release)

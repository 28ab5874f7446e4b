"""The shim-monitor socket: request parsing, the HTTP server over a real unix socket with fake handlers,
the sandbox metrics over a fake source, and the Task service telling its watchers (no VM)."""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kata.errors import KataError
from kata.protocols.pb import shim_task_pb2
from kata.shim.backend import SandboxHandle
from kata.shim.monitor import (
    HttpError,
    MonitorServer,
    Response,
    SandboxCollector,
    ShimMonitor,
    agent_metrics_text,
    encode_response,
    metrics_text,
    parse_request,
)
from tests.unit.test_shim_service import Harness

DEAD_PID = 2**22 + 1  # above pid_max's maximum: never a live process


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 10))


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def request(path: str, method: str, target: str) -> tuple[int, dict[str, str], bytes]:
    """One request with http.client (blocking: run it in a thread)."""
    connection = UnixHTTPConnection(path)
    try:
        connection.request(method, target)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def raw_exchange(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


class FakeSource:
    def __init__(self, pids: tuple[int, ...] = (), agent: str | Exception = "") -> None:
        self.pids = pids
        self.agent = agent

    def agent_url(self) -> str:
        return "vsock://3:1024"

    def vmm_pids(self) -> tuple[int, ...]:
        return self.pids

    def task_count(self) -> int:
        return 2

    async def agent_metrics(self) -> str:
        if isinstance(self.agent, Exception):
            raise self.agent
        return self.agent


# --- pure parts ------------------------------------------------------------------


def test_parse_request_takes_method_and_path_without_query() -> None:
    assert parse_request(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n") == ("GET", "/metrics")
    assert parse_request(b"POST /agent-url HTTP/1.0\r\n\r\n") == ("POST", "/agent-url")


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /metrics\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET  /metrics HTTP/1.1\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"G3T /metrics HTTP/1.1\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"GET /metrics HTTP/2.0\r\n\r\n", HTTPStatus.HTTP_VERSION_NOT_SUPPORTED),
])
def test_parse_request_rejects_malformed_heads(head: bytes, status: HTTPStatus) -> None:
    with pytest.raises(HttpError) as caught:
        parse_request(head)
    assert caught.value.status is status


def test_encode_response_has_length_and_closes() -> None:
    assert encode_response(HTTPStatus.OK, b"abc", "text/plain", {"Allow": "GET"}) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n"
        b"Allow: GET\r\n\r\nabc")


def test_agent_metrics_keep_their_names_except_process_and_go() -> None:
    text = ("# HELP process_cpu_seconds_total CPU.\n# TYPE process_cpu_seconds_total counter\n"
            "process_cpu_seconds_total 1.5\n\n# TYPE kata_guest_load1 gauge\nkata_guest_load1 0.1\n"
            'go_goroutines{a="b"} 3\n')
    assert agent_metrics_text(text) == (
        "# HELP kata_agent_process_cpu_seconds_total CPU.\n# TYPE kata_agent_process_cpu_seconds_total counter\n"
        "kata_agent_process_cpu_seconds_total 1.5\n# TYPE kata_guest_load1 gauge\nkata_guest_load1 0.1\n"
        'kata_agent_go_goroutines{a="b"} 3\n')


# --- the server ------------------------------------------------------------------


def test_server_answers_get_404_405_and_500(tmp_path: Path) -> None:
    socket_path = str(tmp_path / "shim-monitor.sock")
    Path(socket_path).write_text("stale")

    async def agent_url() -> Response:
        return Response(b"vsock://3:1024")

    async def broken() -> Response:
        raise KataError("the agent went away")

    async def scenario() -> None:
        server = MonitorServer({"/agent-url": agent_url, "/broken": broken})
        await server.start(socket_path)  # replaces the stale file
        try:
            status, headers, body = await asyncio.to_thread(request, socket_path, "GET", "/agent-url")
            assert (status, body) == (200, b"vsock://3:1024")
            assert headers["Content-Length"] == "14" and headers["Connection"] == "close"
            status, headers, _ = await asyncio.to_thread(request, socket_path, "POST", "/agent-url")
            assert (status, headers["Allow"]) == (405, "GET")
            assert (await asyncio.to_thread(request, socket_path, "HEAD", "/agent-url"))[0] == 405
            assert (await asyncio.to_thread(request, socket_path, "GET", "/nope"))[0] == 404
            status, _, body = await asyncio.to_thread(request, socket_path, "GET", "/broken")
            assert (status, body) == (500, b"the agent went away\n")
            answer = await asyncio.to_thread(raw_exchange, socket_path, b"nonsense\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            answer = await asyncio.to_thread(raw_exchange, socket_path, b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 431 ")
        finally:
            await server.close()
        assert not os.path.exists(socket_path)

    run(scenario)


# --- metrics ---------------------------------------------------------------------


def sample(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_sandbox_metrics_report_tasks_and_the_vmm_process() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SandboxCollector(FakeSource(pids=(os.getpid(),))))  # this process stands in for QEMU
    text = generate_latest(registry).decode()
    assert sample(text, "kata_shim_tasks") == 2
    rss = sample(text, 'kata_hypervisor_proc_status{item="vmrss"}')
    assert rss == pytest.approx(sample(text, 'kata_shim_proc_status{item="vmrss"}'), rel=0.5) and rss > 0
    assert sample(text, "kata_hypervisor_threads") >= 1 and sample(text, "kata_hypervisor_fds") > 0
    assert 'kata_hypervisor_proc_stat{item="utime"}' in text


def test_sandbox_metrics_of_a_vanished_vmm_are_left_out() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SandboxCollector(FakeSource(pids=(DEAD_PID,))))
    text = generate_latest(registry).decode()
    assert "kata_hypervisor" not in text and "kata_shim_tasks 2.0" in text


def test_metrics_append_the_agents_and_survive_its_failure() -> None:
    async def scenario() -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SandboxCollector(FakeSource()))
        with_agent = await metrics_text(FakeSource(agent="# TYPE kata_guest_load1 gauge\nkata_guest_load1 0.5\n"),
                                        registry)
        assert with_agent.decode().endswith("kata_guest_load1 0.5\n")
        without = await metrics_text(FakeSource(agent=KataError("agent gone")), registry)
        assert b"kata_shim_tasks 2.0" in without and b"kata_guest" not in without

    run(scenario)


# --- the Task service tells its watchers -------------------------------------------


class RecordingWatcher:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def sandbox_started(self, sandbox: SandboxHandle) -> None:
        self.calls.append(("started", sandbox.sandbox_id))

    async def sandbox_stopping(self, sandbox: SandboxHandle) -> None:
        self.calls.append(("stopping", sandbox.sandbox_id))


def test_service_tells_watchers_when_the_sandbox_comes_and_goes(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    watcher = RecordingWatcher()
    monitor = ShimMonitor(lambda: len(harness.service.tasks))
    harness.service.watchers += [watcher, monitor]

    async def scenario() -> None:
        await harness.create("c1")
        assert watcher.calls == [("started", "c1")]
        assert monitor.agent_url() == "" and monitor.task_count() == 1  # a fake sandbox: nothing served
        member = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "c1"}
        await harness.service.create(shim_task_pb2.CreateTaskRequest(id="c2", bundle=harness.bundle("c2", member)))
        assert watcher.calls == [("started", "c1")]
        await harness.service.delete(shim_task_pb2.DeleteRequest(id="c2"))
        await harness.service.delete(shim_task_pb2.DeleteRequest(id="c1"))  # the last task takes the sandbox
        assert watcher.calls == [("started", "c1"), ("stopping", "c1")]
        assert harness.sandboxes[0].deleted
        await monitor.close()

    run(scenario)

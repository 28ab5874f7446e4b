"""The shim-monitor socket: request parsing, the HTTP server over a real unix socket with fake handlers,
the sandbox metrics over a fake source, and the Task service telling its watchers (no VM)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace
from http import HTTPStatus
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kata.agent.types import Interface, IPAddress, Route
from kata.cli.main import main as cli_main
from kata.errors import KataError, NetworkError, StateError
from kata.protocols.pb import shim_task_pb2
from kata.shim.backend import SandboxHandle
from kata.shim.metrics import SandboxCollector, agent_metrics_text, metrics_text
from kata.shim.monitor import (
    MAX_BODY,
    MONITOR_SOCKET,
    HttpError,
    MonitorServer,
    Request,
    Response,
    ShimMonitor,
    content_length,
    encode_response,
    error_status,
    network_routes,
    parse_request,
)
from kata.shim.monitor_client import MonitorAnswer, call
from kata.shim.network_api import interface_json, route_json
from kata.ttrpc.status import NotFoundError, UnimplementedError
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

    async def agent_url(request: Request) -> Response:
        return Response(b"vsock://3:1024")

    async def broken(request: Request) -> Response:
        raise KataError("the agent went away")

    async def scenario() -> None:
        server = MonitorServer({"/agent-url": {"GET": agent_url}, "/broken": {"GET": broken}})
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


# --- network and iptables endpoints (kata-runtime's network verbs) --------------------


class FakeNetwork:
    """A sandbox's network as the endpoints see it: eth0 from the start, links of the namespace to hotplug."""

    def __init__(self) -> None:
        self.interfaces = [Interface("eth0", "0a:58:0a:58:50:02", 1500, (IPAddress("10.88.80.2", 24),))]
        self.links = {"eth1": Interface("eth1", "0a:58:0a:58:51:02", 1400, (IPAddress("10.88.81.2", 24),
                                                                              IPAddress("fd00::2", 64)))}
        self.rules = b""
        self.state_error = False

    async def add_interface(self, name: str) -> Interface:
        if self.state_error:
            raise StateError("only the process that started the VM can hotplug devices", state="running")
        if name not in self.links:
            raise NetworkError(f"no veth, macvlan or ipvlan link {name!r} in the namespace")
        interface = replace(self.links.pop(name), device_path="net1")
        self.interfaces.append(interface)
        return interface

    async def remove_interface(self, name: str) -> None:
        if not any(i.name == name for i in self.interfaces[1:]):
            raise NetworkError(f"{name} is not an interface of the sandbox")
        self.interfaces = [i for i in self.interfaces if i.name != name]

    async def list_interfaces(self) -> tuple[Interface, ...]:
        return (Interface("lo", "", 65536, (IPAddress("127.0.0.1", 8),), raw_flags=0x49), *self.interfaces)

    async def list_routes(self) -> tuple[Route, ...]:
        return (Route(gateway="10.88.80.1", device="eth0"), Route(dest="10.88.80.0/24", device="eth0", scope=253,
                                                                 source="10.88.80.2"),
                Route(dest="fd00::/64", device="eth1", family=6))

    async def get_iptables(self, *, ipv6: bool) -> bytes:
        if not ipv6:
            raise UnimplementedError("GetIPTables: the guest image carries no iptables")
        return self.rules

    async def set_iptables(self, data: bytes, *, ipv6: bool) -> None:
        if not ipv6:
            raise UnimplementedError("SetIPTables: the guest image carries no iptables")
        self.rules = data


def test_interface_and_route_json_use_the_agents_field_names_and_omit_empty_ones() -> None:
    interface = Interface("eth1", "0a:58:0a:58:51:02", 1400, (IPAddress("10.88.81.2", 24), IPAddress("fd00::2")),
                          device_path="net1", link_type="veth", raw_flags=0x1003)
    assert interface_json(interface) == {
        "device": "eth1", "name": "eth1", "mtu": 1400, "hwAddr": "0a:58:0a:58:51:02", "devicePath": "net1",
        "type": "veth", "raw_flags": 0x1003,
        "IPAddresses": [{"address": "10.88.81.2", "mask": "24"}, {"family": 1, "address": "fd00::2"}]}
    assert route_json(Route(gateway="10.88.80.1", device="eth0")) == {"gateway": "10.88.80.1", "device": "eth0"}
    assert route_json(Route(dest="fd00::/64", device="eth1", source="fd00::2", scope=253, family=6, flags=4,
                            mtu=1400)) == {"dest": "fd00::/64", "device": "eth1", "source": "fd00::2", "scope": 253,
                                           "family": 1, "flags": 4, "mtu": 1400}


@pytest.mark.parametrize(("head", "length"), [
    (b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", 0),
    (b"PUT /x HTTP/1.1\r\ncontent-length:  12 \r\n\r\n", 12),
])
def test_content_length_of_a_request(head: bytes, length: int) -> None:
    assert content_length(head) == length


@pytest.mark.parametrize(("head", "status"), [
    (b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", HTTPStatus.LENGTH_REQUIRED),
    (b"PUT /x HTTP/1.1\r\nContent-Length: -3\r\n\r\n", HTTPStatus.BAD_REQUEST),
    (b"PUT /x HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
])
def test_content_length_refuses_what_the_server_cannot_read(head: bytes, status: HTTPStatus) -> None:
    with pytest.raises(HttpError) as caught:
        content_length(head)
    assert caught.value.status is status


def test_error_status_tells_state_network_and_unimplemented_apart() -> None:
    assert error_status(StateError("paused", state="paused")) is HTTPStatus.CONFLICT
    assert error_status(NetworkError("no such link")) is HTTPStatus.BAD_REQUEST
    assert error_status(UnimplementedError("GetIPTables")) is HTTPStatus.NOT_IMPLEMENTED
    assert error_status(NotFoundError("gone")) is HTTPStatus.INTERNAL_SERVER_ERROR
    assert error_status(KataError("other")) is HTTPStatus.INTERNAL_SERVER_ERROR


class NetworkServer:
    """The network routes over a FakeNetwork on a real socket; ``call`` is the blocking client's."""

    def __init__(self, tmp_path: Path, network: FakeNetwork) -> None:
        self.path = str(tmp_path / MONITOR_SOCKET)
        self.server = MonitorServer(network_routes(network))

    def call(self, method: str, target: str, body: bytes = b"") -> MonitorAnswer:
        return call(self.path, method, target, body, timeout=5)

    async def ask(self, method: str, target: str, body: bytes = b"") -> MonitorAnswer:
        return await asyncio.to_thread(self.call, method, target, body)


def test_network_endpoints_list_hotplug_and_unplug(tmp_path: Path) -> None:
    network = FakeNetwork()
    served = NetworkServer(tmp_path, network)

    async def scenario() -> None:
        await served.server.start(served.path)
        try:
            answer = await served.ask("GET", "/network/interfaces")
            assert answer.status == 200 and answer.body.endswith(b"\n") and b"\n" not in answer.body[:-1]
            assert json.loads(answer.body) == [
                {"device": "lo", "name": "lo", "IPAddresses": [{"address": "127.0.0.1", "mask": "8"}],
                 "mtu": 65536, "raw_flags": 0x49},
                {"device": "eth0", "name": "eth0", "IPAddresses": [{"address": "10.88.80.2", "mask": "24"}],
                 "mtu": 1500, "hwAddr": "0a:58:0a:58:50:02"}]
            routes = json.loads((await served.ask("GET", "/network/routes")).body)
            assert routes[0] == {"gateway": "10.88.80.1", "device": "eth0"} and routes[2]["family"] == 1
            added = await served.ask("PUT", "/network/interfaces/eth1")
            assert added.status == 200
            assert json.loads(added.body)["devicePath"] == "net1"
            assert json.loads(added.body)["IPAddresses"][1] == {"family": 1, "address": "fd00::2", "mask": "64"}
            names = [i["name"] for i in json.loads((await served.ask("GET", "/network/interfaces")).body)]
            assert names == ["lo", "eth0", "eth1"]
            again = await served.ask("PUT", "/network/interfaces/eth1")
            assert (again.status, again.text) == (400, "no veth, macvlan or ipvlan link 'eth1' in the namespace")
            removed = await served.ask("DELETE", "/network/interfaces/eth1")
            assert (removed.status, removed.body) == (204, b"")
            assert (await served.ask("DELETE", "/network/interfaces/eth0")).status == 400
            network.state_error = True
            refused = await served.ask("PUT", "/network/interfaces/eth9")
            assert refused.status == 409 and "only the process that started the VM" in refused.text
            not_allowed = await served.ask("POST", "/network/interfaces")
            assert (not_allowed.status, not_allowed.ok) == (405, False)
            assert (await served.ask("GET", "/network/interfaces/")).status == 404
            assert (await served.ask("GET", "/network/interfaces/eth0")).status == 405
        finally:
            await served.server.close()

    run(scenario)


def test_iptables_endpoints_pass_bodies_and_answer_501_when_the_guest_has_none(tmp_path: Path) -> None:
    network = FakeNetwork()
    served = NetworkServer(tmp_path, network)
    rules = b"*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n" * 100

    async def scenario() -> None:
        await served.server.start(served.path)
        try:
            unimplemented = await served.ask("GET", "/iptables")
            assert (unimplemented.status, unimplemented.text) == (
                501, "UNIMPLEMENTED: GetIPTables: the guest image carries no iptables")
            assert (await served.ask("PUT", "/iptables", rules)).status == 501
            assert (await served.ask("PUT", "/ip6tables", rules)).status == 200
            assert network.rules == rules
            assert (await served.ask("GET", "/ip6tables")).body == rules
            too_big = await served.ask("PUT", "/ip6tables", b"x" * (MAX_BODY + 1))
            assert too_big.status == 413 and network.rules == rules
        finally:
            await served.server.close()

    run(scenario)


def test_cli_network_verbs_over_the_shim_monitor_socket(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    network = FakeNetwork()
    sandbox = tmp_path / "sb1"
    sandbox.mkdir()
    (sandbox / "state.json").write_text("{}")
    server = MonitorServer(network_routes(network))
    rules = tmp_path / "rules"
    rules.write_text("*filter\nCOMMIT\n")

    def cli(*args: str) -> tuple[int, str, str]:
        """Exit code, stdout and the CLI's own stderr lines (the server's log lines are left out)."""
        code = cli_main(["--root", str(tmp_path), *args])
        out, err = capfd.readouterr()
        return code, out, "".join(line for line in err.splitlines(keepends=True) if not line.startswith("time="))

    async def scenario() -> None:
        await server.start(str(sandbox / MONITOR_SOCKET))
        try:
            code, out, _ = await asyncio.to_thread(cli, "list-ifaces", "sb1")
            assert code == 0 and [i["name"] for i in json.loads(out)] == ["lo", "eth0"]
            code, out, _ = await asyncio.to_thread(cli, "add-iface", "sb1", "eth1")
            assert code == 0 and json.loads(out)["name"] == "eth1"
            code, out, _ = await asyncio.to_thread(cli, "list-routes", "sb1")
            assert code == 0 and json.loads(out)[0]["gateway"] == "10.88.80.1"
            assert await asyncio.to_thread(cli, "del-iface", "sb1", "eth1") == (0, "", "")
            code, _, err = await asyncio.to_thread(cli, "del-iface", "sb1", "eth1")
            assert (code, err) == (1, "kata-runtime: error: del-iface sb1: eth1 is not an interface of the sandbox\n")
            code, out, err = await asyncio.to_thread(cli, "iptables", "get", "--sandbox-id", "sb1")
            assert (code, out) == (1, "") and err == (
                "kata-runtime: error: iptables get sb1: not supported: the guest has no iptables "
                "(UNIMPLEMENTED: GetIPTables: the guest image carries no iptables)\n")
            assert (await asyncio.to_thread(cli, "iptables", "set", "--sandbox-id", "sb1", "--v6", str(rules)))[0] == 0
            assert await asyncio.to_thread(cli, "iptables", "get", "--sandbox-id", "sb1", "--v6") == (
                0, "*filter\nCOMMIT\n", "")
        finally:
            await server.close()

    run(scenario)


def test_cli_network_verbs_without_a_shim(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "lonely").mkdir()
    (tmp_path / "lonely" / "state.json").write_text("{}")
    root = ["--root", str(tmp_path)]
    assert cli_main([*root, "add-iface", "lonely", "eth1"]) == 1
    assert capfd.readouterr().err == ("kata-runtime: error: add-iface lonely: no shim serves this sandbox: only the "
                                      "process that started its VM can hotplug interfaces\n")
    assert cli_main([*root, "iptables", "get", "--sandbox-id", "lonely"]) == 1
    assert "no shim serves this sandbox" in capfd.readouterr().err
    assert cli_main([*root, "list-ifaces", "gone"]) == 1
    assert capfd.readouterr().err == f"kata-runtime: error: list-ifaces gone: sandbox does not exist under {tmp_path}\n"
    assert cli_main([*root, "list-routes", "../etc"]) == 2
    assert cli_main([*root, "iptables", "set", "--sandbox-id", "lonely"]) == 2  # FILE is required

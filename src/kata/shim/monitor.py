"""The shim management socket (Kata's shim-monitor): ``<state root>/<sandbox id>/shim-monitor.sock``,
HTTP/1.1 with ``GET /agent-url``, ``GET /metrics`` (Prometheus text format), the network verbs
(``/network/interfaces[/<name>]``, ``/network/routes``) and ``/iptables``, ``/ip6tables``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from kata.agent.types import Interface, Route
from kata.errors import KataError, NetworkError, RpcError, StateError
from kata.log import fields
from kata.sandbox import AsyncSandbox
from kata.shim.backend import SandboxHandle
from kata.shim.network_api import NetworkTarget, interface_json, interfaces_body, routes_body
from kata.ttrpc.status import Code

__all__ = [
    "MONITOR_SOCKET",
    "HttpError",
    "MonitorServer",
    "MonitorSource",
    "Request",
    "Response",
    "SandboxCollector",
    "ShimMonitor",
    "agent_metrics_text",
    "content_length",
    "encode_response",
    "error_status",
    "metrics_text",
    "network_routes",
    "parse_request",
]

_log = logging.getLogger("kata.shim")
MONITOR_SOCKET = "shim-monitor.sock"  # in the sandbox's state dir, as Kata's runtime-rs (/run/kata/<id>/)
AGENT_URL_PATH = "/agent-url"
METRICS_PATH = "/metrics"
INTERFACES_PATH = "/network/interfaces"
ROUTES_PATH = "/network/routes"
IPTABLES_PATH = "/iptables"  # Kata 2's shim-monitor paths
IP6TABLES_PATH = "/ip6tables"
MAX_HEAD = 8192  # request line and headers
MAX_BODY = 1 << 20  # a PUT's body: an iptables-restore file
READ_TIMEOUT = 5.0
AGENT_METRICS_TIMEOUT = 5.0
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
# /proc/<pid>/status lines reported as kata_*_proc_status{item=...}, as Kata's SetGaugeVecProcStatus
# (sizes in bytes, as Go's procfs gives them).
STATUS_ITEMS = {"VmPeak": "vmpeak", "VmSize": "vmsize", "VmLck": "vmlck", "VmPin": "vmpin", "VmHWM": "vmhwm",
                "VmRSS": "vmrss", "RssAnon": "rssanon", "RssFile": "rssfile", "RssShmem": "rssshmem",
                "VmData": "vmdata", "VmStk": "vmstk", "VmExe": "vmexe", "VmLib": "vmlib", "VmPTE": "vmpte",
                "VmPMD": "vmpmd", "VmSwap": "vmswap", "HugetlbPages": "hugetlbpages",
                "voluntary_ctxt_switches": "voluntary_ctxt_switches",
                "nonvoluntary_ctxt_switches": "nonvoluntary_ctxt_switches"}
STAT_ITEMS = {"utime": 11, "stime": 12, "cutime": 13, "cstime": 14}  # 0-based fields after "pid (comm)"
STAT_THREADS = 17


class HttpError(Exception):
    """A request this server answers with an error status."""

    def __init__(self, status: HTTPStatus, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Request:
    """One request as a handler gets it: ``name`` is the path's last segment (URL-decoded) when a prefix
    route (a path ending in ``/``) matched."""

    method: str
    path: str
    body: bytes = b""
    name: str = ""


@dataclass(frozen=True)
class Response:
    """What a handler answers."""

    body: bytes
    content_type: str = TEXT
    status: HTTPStatus = HTTPStatus.OK


Handler = Callable[[Request], Awaitable[Response]]
Routes = Mapping[str, Mapping[str, Handler]]
"""path -> method -> handler; a path ending in ``/`` takes one more segment (Request.name)."""


def parse_request(head: bytes) -> tuple[str, str]:
    """Method and path (query dropped) of an HTTP/1.x request head (request line plus headers).

    Raises:
        HttpError: 400 for a malformed request line, 505 for another protocol version.
    """
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"malformed request line {line[:80]!r}")
    method, target, version = parts
    if not version.startswith("HTTP/1."):
        raise HttpError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"{version[:16]} is not supported")
    return method, target.split("?", 1)[0]


def content_length(head: bytes) -> int:
    """The length of the body that follows the request ``head`` (0 without a Content-Length).

    Raises:
        HttpError: 411 for a chunked body, 400 for a malformed length, 413 for one over MAX_BODY.
    """
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        header = name.strip().lower()
        if not colon or header not in (b"content-length", b"transfer-encoding"):
            continue
        if header == b"transfer-encoding":
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length (no chunked encoding)")
        if not value.strip().isdigit():
            raise HttpError(HTTPStatus.BAD_REQUEST, f"malformed Content-Length {value.strip()[:20]!r}")
        length = int(value)
    if length > MAX_BODY:
        raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes: at most {MAX_BODY}")
    return length


def error_status(exc: BaseException) -> HTTPStatus:
    """The status an error of a handler is answered with (its text is the body): 409 for a sandbox in the
    wrong state, 400 for a network request that cannot be done, 501 for what the guest does not
    implement, 500 otherwise (Kata answers 500 for all)."""
    if isinstance(exc, StateError):
        return HTTPStatus.CONFLICT
    if isinstance(exc, NetworkError):
        return HTTPStatus.BAD_REQUEST
    if isinstance(exc, RpcError) and exc.code == Code.UNIMPLEMENTED:
        return HTTPStatus.NOT_IMPLEMENTED
    return HTTPStatus.INTERNAL_SERVER_ERROR


def encode_response(status: HTTPStatus, body: bytes, content_type: str = TEXT,
                    headers: Mapping[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 response; the connection closes after it."""
    lines = [f"HTTP/1.1 {status.value} {status.phrase}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class MonitorServer:
    """A small HTTP/1.1 server on a unix socket: the methods and paths of ``routes``, 404 for other paths,
    405 for other methods, one request per connection (a body only with a Content-Length)."""

    def __init__(self, routes: Routes) -> None:
        self.routes = {path: dict(methods) for path, methods in routes.items()}
        self._server: asyncio.AbstractServer | None = None
        self.path = ""

    async def start(self, path: str) -> None:
        """Listen on ``path`` (a stale file there is replaced).

        Raises:
            OSError: the socket could not be made.
        """
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = await asyncio.start_unix_server(self._serve, path, limit=MAX_HEAD)
        self.path = path

    async def close(self) -> None:
        """Stop listening and unlink the socket (requests being answered are cut)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if hasattr(server, "close_clients"):  # Python 3.13+: do not wait for slow clients
            server.close_clients()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except asyncio.LimitOverrunError:
            await self._answer(writer, encode_response(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, b"too large\n"))
            return
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        try:
            length = content_length(head)
        except HttpError as exc:
            await self._answer(writer, encode_response(exc.status, f"{exc}\n".encode()))
            return
        try:
            body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT) if length else b""
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        await self._answer(writer, await self.respond(head, body))

    def _route(self, path: str) -> tuple[dict[str, Handler], str]:
        methods = self.routes.get(path) if not path.endswith("/") else None
        if methods is not None:
            return methods, ""
        prefix, _, name = path.rpartition("/")
        methods = self.routes.get(f"{prefix}/")
        if methods is None or not name:
            raise HttpError(HTTPStatus.NOT_FOUND, f"{path[:200]} not found")
        return methods, unquote(name)

    async def respond(self, head: bytes, body: bytes = b"") -> bytes:
        """The encoded response to one request (``head`` and its ``body``)."""
        try:
            method, path = parse_request(head)
            methods, name = self._route(path)
            handler = methods.get(method)
            if handler is None:
                raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method[:16]} not allowed",
                                {"Allow": ", ".join(sorted(methods))})
            answer = await handler(Request(method, path, body, name))
        except HttpError as exc:
            return encode_response(exc.status, f"{exc}\n".encode(), headers=exc.headers)
        except (KataError, OSError) as exc:  # the error text is the body, as Kata's
            status = error_status(exc)
            level = logging.WARNING if status is HTTPStatus.INTERNAL_SERVER_ERROR else logging.INFO
            _log.log(level, "monitor request failed: %s", exc)
            return encode_response(status, f"{exc}\n".encode())
        return encode_response(answer.status, answer.body, answer.content_type)

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, data: bytes) -> None:
        try:
            writer.write(data)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


class MonitorSource(Protocol):
    """What the monitor reports on (ShimMonitor is one over the Task service's sandbox)."""

    def agent_url(self) -> str:
        """The agent's URL, as Kata's GetAgentURL."""

    def vmm_pids(self) -> tuple[int, ...]:
        """Host pids of the VMM (first) and its helpers (virtiofsd)."""

    def task_count(self) -> int:
        """The tasks (containers) the shim serves."""

    async def agent_metrics(self) -> str:
        """The guest agent's metrics (Prometheus text).

        Raises:
            KataError: the agent could not be asked.
        """


def _proc_status(pid: int) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in STATUS_ITEMS and value.split():
            number, *unit = value.split()
            found[STATUS_ITEMS[key]] = float(number) * (1024 if unit == ["kB"] else 1)
    return found


def _proc_stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def _process_metrics(prefix: str, pid: int, what: str) -> Iterator[Metric]:
    """Kata's per-process gauges (threads, fds, proc_status, proc_stat) of ``pid`` as ``prefix``_*."""
    try:
        stat, status = _proc_stat(pid), _proc_status(pid)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return  # the process is gone (or not ours): nothing to report
    yield GaugeMetricFamily(f"{prefix}_threads", f"{what} process threads.", value=float(stat[STAT_THREADS]))
    yield GaugeMetricFamily(f"{prefix}_fds", f"Open FDs for {what}.", value=float(fds))
    status_family = GaugeMetricFamily(f"{prefix}_proc_status", f"{what} process status.", labels=["item"])
    for item, value in status.items():
        status_family.add_metric([item], value)
    yield status_family
    stat_family = GaugeMetricFamily(f"{prefix}_proc_stat", f"{what} process statistics.", labels=["item"])
    for item, index in STAT_ITEMS.items():
        stat_family.add_metric([item], float(stat[index]))
    yield stat_family


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class SandboxCollector(Collector):
    """The sandbox-level gauges: the shim's tasks and threads, the VMM's and virtiofsd's processes."""

    def __init__(self, source: MonitorSource) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("kata_shim_tasks", "Tasks (containers) served by this shim.",
                                value=float(self.source.task_count()))
        yield from _process_metrics("kata_shim", os.getpid(), "Kata containerd shim v2")
        pids = self.source.vmm_pids()
        if pids:
            yield from _process_metrics("kata_hypervisor", pids[0], "Hypervisor")
        for pid in pids[1:]:
            if "virtiofsd" in _comm(pid):
                yield from _process_metrics("kata_virtiofsd", pid, "Virtiofsd")
                break


def _agent_line(line: str) -> str:
    words = line.split(" ", 3)
    if line.startswith("# ") and len(words) > 2 and words[1] in ("HELP", "TYPE"):
        if words[2].startswith(("go_", "process_")):
            words[2] = f"kata_agent_{words[2]}"
        return " ".join(words)
    return f"kata_agent_{line}" if line.startswith(("go_", "process_")) else line


def agent_metrics_text(text: str) -> str:
    """The agent's families as Kata passes them on: ``go_``/``process_`` ones renamed ``kata_agent_...``
    (so they do not clash with the shim's own process metrics); blank lines dropped."""
    return "".join(f"{_agent_line(line)}\n" for line in text.splitlines() if line.strip())


async def metrics_text(source: MonitorSource, registry: CollectorRegistry) -> bytes:
    """The shim's and sandbox's metrics, then the agent's (left out, with a log line, when it cannot be
    asked)."""
    text = generate_latest(registry)
    try:
        agent = await asyncio.wait_for(source.agent_metrics(), AGENT_METRICS_TIMEOUT)
    except (KataError, TimeoutError) as exc:
        _log.warning("agent metrics unavailable: %s", exc)
        return text
    return text + agent_metrics_text(agent).encode()


def _json(data: bytes, status: HTTPStatus = HTTPStatus.OK) -> Response:
    return Response(data, JSON, status)


def network_routes(target: NetworkTarget) -> dict[str, dict[str, Handler]]:
    """The network endpoints over ``target`` (docs/network.md, "kata-runtime network verbs"):

    - ``GET /network/interfaces``, ``GET /network/routes``: the guest's, as JSON lists;
    - ``PUT /network/interfaces/<name>``: hotplug the link ``name`` of the sandbox's network namespace;
      the guest's interface as a JSON object;
    - ``DELETE /network/interfaces/<name>``: unplug it (204);
    - ``GET /iptables``, ``GET /ip6tables``: the guest's rules (iptables-save text); ``PUT`` with a body
      (iptables-restore input) replaces them (Kata 2's paths and semantics).
    """
    async def list_interfaces(request: Request) -> Response:
        del request
        return _json(interfaces_body(await target.list_interfaces()))

    async def list_routes(request: Request) -> Response:
        del request
        return _json(routes_body(await target.list_routes()))

    async def add_interface(request: Request) -> Response:
        interface: Interface = await target.add_interface(request.name)
        return _json((json.dumps(interface_json(interface), separators=(",", ":")) + "\n").encode())

    async def remove_interface(request: Request) -> Response:
        await target.remove_interface(request.name)
        return Response(b"", status=HTTPStatus.NO_CONTENT)

    def iptables(ipv6: bool) -> dict[str, Handler]:
        async def get(request: Request) -> Response:
            del request
            return Response(await target.get_iptables(ipv6=ipv6))

        async def put(request: Request) -> Response:
            await target.set_iptables(request.body, ipv6=ipv6)
            return Response(b"")

        return {"GET": get, "PUT": put}

    return {INTERFACES_PATH: {"GET": list_interfaces}, f"{INTERFACES_PATH}/": {"PUT": add_interface,
                                                                             "DELETE": remove_interface},
            ROUTES_PATH: {"GET": list_routes}, IPTABLES_PATH: iptables(False), IP6TABLES_PATH: iptables(True)}


class ShimMonitor:
    """The shim-monitor socket of the Task service's sandbox (a SandboxWatcher of the service): served
    once the sandbox is made, closed (socket unlinked) before the sandbox is deleted. ``task_count``
    tells how many tasks the service has."""

    def __init__(self, task_count: Callable[[], int]) -> None:
        self._task_count = task_count
        self._sandbox: AsyncSandbox | None = None
        self._server: MonitorServer | None = None
        self._registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._registry)
        self._registry.register(SandboxCollector(self))

    # MonitorSource over the sandbox

    def agent_url(self) -> str:
        return self._sandbox.record.vm.agent_url if self._sandbox is not None else ""

    def vmm_pids(self) -> tuple[int, ...]:
        return self._sandbox.pids if self._sandbox is not None else ()

    def task_count(self) -> int:
        return self._task_count()

    async def agent_metrics(self) -> str:
        sandbox = self._sandbox
        if sandbox is None:
            return ""
        agent = sandbox.agent_for("call the agent")
        return await sandbox.call(agent.get_metrics())

    # NetworkTarget over the sandbox

    def _served(self) -> AsyncSandbox:
        if self._sandbox is None:
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "the sandbox is going away")
        return self._sandbox

    async def add_interface(self, name: str) -> Interface:
        return await self._served().add_interface(name)

    async def remove_interface(self, name: str) -> None:
        await self._served().remove_interface(name)

    async def list_interfaces(self) -> tuple[Interface, ...]:
        return await self._served().list_interfaces()

    async def list_routes(self) -> tuple[Route, ...]:
        return await self._served().list_routes()

    async def get_iptables(self, *, ipv6: bool) -> bytes:
        sandbox = self._served()
        return await sandbox.call(sandbox.agent_for("call the agent").get_ip_tables(ipv6=ipv6))

    async def set_iptables(self, data: bytes, *, ipv6: bool) -> None:
        sandbox = self._served()
        await sandbox.call(sandbox.agent_for("call the agent").set_ip_tables(data, ipv6=ipv6))

    # the server

    async def _agent_url(self, request: Request) -> Response:
        del request
        url = self.agent_url()
        if not url:
            raise HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, "the sandbox has no agent URL")
        return Response(url.encode())  # no newline, as Kata's fmt.Fprint

    async def _metrics(self, request: Request) -> Response:
        del request
        return Response(await metrics_text(self, self._registry), CONTENT_TYPE_PLAIN_0_0_4)

    def routes(self) -> dict[str, dict[str, Handler]]:
        """Every endpoint of the socket."""
        return {AGENT_URL_PATH: {"GET": self._agent_url}, METRICS_PATH: {"GET": self._metrics},
                **network_routes(self)}

    async def sandbox_started(self, sandbox: SandboxHandle) -> None:
        """Serve the sandbox's socket (a failure is logged: the shim works without it)."""
        await self.close()
        if not isinstance(sandbox, AsyncSandbox):
            return  # a test's fake: no state dir to serve in
        self._sandbox = sandbox
        server = MonitorServer(self.routes())
        try:
            await server.start(str(sandbox.paths.directory / MONITOR_SOCKET))
        except OSError as exc:
            _log.warning("shim-monitor socket not served: %s", exc, extra=fields(sandbox=sandbox.sandbox_id))
            return
        self._server = server
        _log.info("shim-monitor serving", extra=fields(sandbox=sandbox.sandbox_id, socket=server.path))

    async def sandbox_stopping(self, sandbox: SandboxHandle) -> None:
        """Stop serving before the sandbox (and its state dir) goes."""
        del sandbox
        await self.close()

    async def close(self) -> None:
        """Stop serving and unlink the socket."""
        server, self._server = self._server, None
        self._sandbox = None
        if server is not None:
            await server.close()

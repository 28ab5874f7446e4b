"""The shim management socket (Kata's shim-monitor): ``<state root>/<sandbox id>/shim-monitor.sock``,
HTTP/1.1 with ``GET /agent-url``, ``GET /metrics`` (Prometheus text format), the network verbs
(``/network/interfaces[/<name>]``, ``/network/routes``) and ``/iptables``, ``/ip6tables``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote

from kata.agent.types import Interface, Route
from kata.errors import KataError, NetworkError, RpcError, StateError
from kata.log import fields
from kata.sandbox import AsyncSandbox
from kata.shim.backend import SandboxHandle
from kata.shim.network_api import NetworkTarget, interface_json, interfaces_body, routes_body
from kata.ttrpc.status import Code

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "MONITOR_SOCKET",
    "HttpError",
    "MonitorServer",
    "MonitorSource",
    "Request",
    "Response",
    "ShimMonitor",
    "content_length",
    "encode_response",
    "error_status",
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
LINGER = 2.0  # seconds a refused request's body is read and dropped before the connection closes
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


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
            await self._answer(writer, encode_response(exc.status, f"{exc}\n".encode()), linger=reader)
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
    async def _answer(writer: asyncio.StreamWriter, data: bytes, *, linger: asyncio.StreamReader | None = None,
                      ) -> None:
        """Write ``data`` and close. With ``linger`` (a request whose body is refused unread), half-close and
        discard what the client still sends (bounded), so that it reads the answer rather than a reset."""
        try:
            writer.write(data)
            await writer.drain()
            if linger is not None and writer.can_write_eof():
                writer.write_eof()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LINGER):
                        while await linger.read(65536):
                            pass
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
        self._registry: CollectorRegistry | None = None  # made by the first /metrics: prometheus_client is
        # 4-5 MiB of heap in every shim daemon otherwise

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
        from kata.shim import metrics

        if self._registry is None:
            self._registry = metrics.new_registry(self)
        return Response(await metrics.metrics_text(self, self._registry), metrics.CONTENT_TYPE)

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

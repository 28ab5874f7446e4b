"""The shim management socket (Kata's shim-monitor): ``<state root>/<sandbox id>/shim-monitor.sock``,
HTTP/1.1 with ``GET /agent-url`` and ``GET /metrics`` (Prometheus text format)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from kata.errors import KataError
from kata.log import fields
from kata.sandbox import AsyncSandbox
from kata.shim.backend import SandboxHandle

__all__ = [
    "MONITOR_SOCKET",
    "HttpError",
    "MonitorServer",
    "MonitorSource",
    "Response",
    "SandboxCollector",
    "ShimMonitor",
    "agent_metrics_text",
    "encode_response",
    "metrics_text",
    "parse_request",
]

_log = logging.getLogger("kata.shim")
MONITOR_SOCKET = "shim-monitor.sock"  # in the sandbox's state dir, as Kata's runtime-rs (/run/kata/<id>/)
AGENT_URL_PATH = "/agent-url"
METRICS_PATH = "/metrics"
MAX_HEAD = 8192  # request line and headers; a GET has no body worth reading
READ_TIMEOUT = 5.0
AGENT_METRICS_TIMEOUT = 5.0
TEXT = "text/plain; charset=utf-8"
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
class Response:
    """What a handler answers."""

    body: bytes
    content_type: str = TEXT
    status: HTTPStatus = HTTPStatus.OK


Handler = Callable[[], Awaitable[Response]]


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


def encode_response(status: HTTPStatus, body: bytes, content_type: str = TEXT,
                    headers: Mapping[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 response; the connection closes after it."""
    lines = [f"HTTP/1.1 {status.value} {status.phrase}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class MonitorServer:
    """A small HTTP/1.1 server on a unix socket: GET on the paths of ``routes``, 404 for other paths, 405
    for other methods, one request per connection."""

    def __init__(self, routes: Mapping[str, Handler]) -> None:
        self.routes = dict(routes)
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
        await self._answer(writer, await self.respond(head))

    async def respond(self, head: bytes) -> bytes:
        """The encoded response to one request ``head``."""
        try:
            method, path = parse_request(head)
            handler = self.routes.get(path)
            if handler is None:
                raise HttpError(HTTPStatus.NOT_FOUND, f"{path[:200]} not found")
            if method != "GET":
                raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method[:16]} not allowed", {"Allow": "GET"})
            answer = await handler()
        except HttpError as exc:
            return encode_response(exc.status, f"{exc}\n".encode(), headers=exc.headers)
        except (KataError, OSError) as exc:  # Kata answers 500 with the error text too
            _log.warning("monitor request failed: %s", exc)
            return encode_response(HTTPStatus.INTERNAL_SERVER_ERROR, f"{exc}\n".encode())
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

    # the server

    async def _agent_url(self) -> Response:
        url = self.agent_url()
        if not url:
            raise HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, "the sandbox has no agent URL")
        return Response(url.encode())  # no newline, as Kata's fmt.Fprint

    async def _metrics(self) -> Response:
        return Response(await metrics_text(self, self._registry), CONTENT_TYPE_PLAIN_0_0_4)

    async def sandbox_started(self, sandbox: SandboxHandle) -> None:
        """Serve the sandbox's socket (a failure is logged: the shim works without it)."""
        await self.close()
        if not isinstance(sandbox, AsyncSandbox):
            return  # a test's fake: no state dir to serve in
        self._sandbox = sandbox
        server = MonitorServer({AGENT_URL_PATH: self._agent_url, METRICS_PATH: self._metrics})
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

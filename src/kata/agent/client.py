"""AgentClient: typed calls to the guest agent (grpc.AgentService, grpc.Health) over ttRPC."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TypeVar

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from kata.agent import trans
from kata.agent.transport import open_channel
from kata.agent.types import (
    AgentVersion,
    ARPNeighbor,
    ContainerRequest,
    ExecRequest,
    GuestDetails,
    Interface,
    Route,
    SandboxRequest,
)
from kata.errors import AgentError, RpcError
from kata.oci import Resources
from kata.protocols.pb import agent_pb2, health_pb2, types_pb2
from kata.ttrpc.aio import AsyncClient
from kata.ttrpc.status import Code

__all__ = ["AGENT_SERVICE", "HEALTH_SERVICE", "AgentClient"]

AGENT_SERVICE = "grpc.AgentService"
HEALTH_SERVICE = "grpc.Health"
DEFAULT_TIMEOUT = 60.0
M = TypeVar("M", bound=Message)


class AgentClient:
    """One connection to a guest agent. Methods raise RpcError subclasses for gRPC errors,
    ConnectionClosedError when the channel is gone and DeadlineExceededError on timeouts."""

    def __init__(self, client: AsyncClient, *, url: str = "") -> None:
        self._client = client
        self.url = url

    @classmethod
    async def connect(cls, url: str, *, timeout: float = 30.0) -> AgentClient:
        """Connect to the agent channel at ``url`` (see kata.agent.transport).

        Raises:
            AgentError: when no connection could be made within ``timeout``.
        """
        return cls(await open_channel(url, timeout=timeout), url=url)

    async def close(self) -> None:
        await self._client.close(timeout=1.0)

    async def _call(self, method: str, request: Message, response_type: type[M], *,
                    timeout: float | None = DEFAULT_TIMEOUT, service: str = AGENT_SERVICE) -> M:
        return await self._client.call(service, method, request, response_type, timeout=timeout)

    async def _empty(self, method: str, request: Message, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        await self._call(method, request, empty_pb2.Empty, timeout=timeout)

    # grpc.Health

    async def check(self, *, timeout: float = 5.0) -> bool:
        """Whether the agent answers Health.Check with SERVING.

        Raises:
            AgentError: ``timeout`` is not positive.
        """
        _check_timeout(self.url, timeout)
        answer = await self._call("Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse,
                                  timeout=timeout, service=HEALTH_SERVICE)
        return answer.status == health_pb2.HealthCheckResponse.SERVING

    async def wait_ready(self, timeout: float) -> float:
        """Wait until Health.Check answers SERVING; return the seconds it took.

        Raises:
            AgentError: when the agent did not answer within ``timeout`` (or ``timeout`` is not positive).
        """
        _check_timeout(self.url, timeout)
        start = time.monotonic()
        try:
            if await self.check(timeout=timeout):
                return time.monotonic() - start
        except RpcError as exc:
            raise AgentError(f"agent at {self.url} did not become ready: {exc}") from exc
        raise AgentError(f"agent at {self.url} answered NOT_SERVING")

    async def version(self) -> AgentVersion:
        answer = await self._call("Version", health_pb2.CheckRequest(), health_pb2.VersionCheckResponse,
                                  service=HEALTH_SERVICE)
        return trans.version_from_pb(answer)

    # sandbox

    async def create_sandbox(self, request: SandboxRequest) -> None:
        await self._empty("CreateSandbox", trans.sandbox_to_pb(request))

    async def destroy_sandbox(self) -> None:
        await self._empty("DestroySandbox", agent_pb2.DestroySandboxRequest())

    async def get_guest_details(self) -> GuestDetails:
        answer = await self._call("GetGuestDetails", agent_pb2.GuestDetailsRequest(mem_block_size=True),
                                  agent_pb2.GuestDetailsResponse)
        return trans.guest_details_from_pb(answer)

    async def set_guest_date_time(self, seconds: float) -> None:
        whole = int(seconds)
        await self._empty("SetGuestDateTime", agent_pb2.SetGuestDateTimeRequest(
            Sec=whole, Usec=int((seconds - whole) * 1_000_000)))

    async def reseed_random_dev(self, data: bytes) -> None:
        await self._empty("ReseedRandomDev", agent_pb2.ReseedRandomDevRequest(data=data))

    # containers and processes

    async def create_container(self, request: ContainerRequest) -> None:
        await self._empty("CreateContainer", trans.container_to_pb(request))

    async def start_container(self, container_id: str) -> None:
        await self._empty("StartContainer", agent_pb2.StartContainerRequest(container_id=container_id))

    async def remove_container(self, container_id: str, timeout: int = 0) -> None:
        await self._empty("RemoveContainer",
                          agent_pb2.RemoveContainerRequest(container_id=container_id, timeout=timeout))

    async def exec_process(self, request: ExecRequest) -> None:
        await self._empty("ExecProcess", trans.exec_to_pb(request))

    async def signal_process(self, container_id: str, exec_id: str, signal: int) -> None:
        await self._empty("SignalProcess", agent_pb2.SignalProcessRequest(
            container_id=container_id, exec_id=exec_id, signal=signal))

    async def wait_process(self, container_id: str, exec_id: str) -> int:
        """Block until the process exits; its status (exit code, or 128+signal when killed)."""
        answer = await self._call("WaitProcess", agent_pb2.WaitProcessRequest(
            container_id=container_id, exec_id=exec_id), agent_pb2.WaitProcessResponse, timeout=None)
        return answer.status

    async def _read(self, method: str, container_id: str, exec_id: str, size: int) -> bytes:
        try:
            answer = await self._call(method, agent_pb2.ReadStreamRequest(
                container_id=container_id, exec_id=exec_id, len=size), agent_pb2.ReadStreamResponse,
                timeout=None)
        except RpcError as exc:
            if exc.code == Code.OUT_OF_RANGE:  # our agent's end-of-stream answer
                return b""
            raise
        return answer.data

    async def read_stdout(self, container_id: str, exec_id: str, size: int = 65536) -> bytes:
        """Next bytes of the process's stdout (its terminal, with a tty); b"" at end of stream."""
        return await self._read("ReadStdout", container_id, exec_id, size)

    async def read_stderr(self, container_id: str, exec_id: str, size: int = 65536) -> bytes:
        """Next bytes of the process's stderr; b"" at end of stream."""
        return await self._read("ReadStderr", container_id, exec_id, size)

    async def write_stdin(self, container_id: str, exec_id: str, data: bytes) -> int:
        answer = await self._call("WriteStdin", agent_pb2.WriteStreamRequest(
            container_id=container_id, exec_id=exec_id, data=data), agent_pb2.WriteStreamResponse)
        return answer.len

    async def close_stdin(self, container_id: str, exec_id: str) -> None:
        await self._empty("CloseStdin", agent_pb2.CloseStdinRequest(container_id=container_id,
                                                                    exec_id=exec_id))

    async def tty_win_resize(self, container_id: str, exec_id: str, rows: int, columns: int) -> None:
        await self._empty("TtyWinResize", agent_pb2.TtyWinResizeRequest(
            container_id=container_id, exec_id=exec_id, row=rows, column=columns))

    async def pause_container(self, container_id: str) -> None:
        await self._empty("PauseContainer", agent_pb2.PauseContainerRequest(container_id=container_id))

    async def resume_container(self, container_id: str) -> None:
        await self._empty("ResumeContainer", agent_pb2.ResumeContainerRequest(container_id=container_id))

    async def get_oom_event(self) -> str:
        """Block until a container is OOM-killed in the guest; its id."""
        answer = await self._call("GetOOMEvent", agent_pb2.GetOOMEventRequest(), agent_pb2.OOMEvent, timeout=None)
        return answer.container_id

    async def update_container(self, container_id: str, resources: Resources) -> None:
        """Apply new cgroup limits to a created or running container.

        Raises:
            OciError: a number does not fit its protobuf field.
        """
        await self._empty("UpdateContainer", trans.update_to_pb(container_id, resources))

    async def get_metrics(self) -> str:
        """The agent's (and guest's) metrics in Prometheus text format."""
        return (await self._call("GetMetrics", agent_pb2.GetMetricsRequest(), agent_pb2.Metrics)).metrics

    async def stats_container(self, container_id: str) -> agent_pb2.StatsContainerResponse:
        """Raw cgroup statistics (kept as protobuf: the shim forwards them as cgroup metrics)."""
        return await self._call("StatsContainer", agent_pb2.StatsContainerRequest(
            container_id=container_id), agent_pb2.StatsContainerResponse)

    # network

    async def update_interface(self, interface: Interface) -> Interface:
        """Configure the guest NIC with ``interface.hw_addr``; the NIC as the guest then has it."""
        answer = await self._call("UpdateInterface", agent_pb2.UpdateInterfaceRequest(
            interface=trans.interface_to_pb(interface)), types_pb2.Interface)
        return trans.interface_from_pb(answer)

    async def update_routes(self, routes: Sequence[Route]) -> tuple[Route, ...]:
        """Replace the guest's routes by ``routes``; the routes the guest then has."""
        answer = await self._call("UpdateRoutes", agent_pb2.UpdateRoutesRequest(
            routes=agent_pb2.Routes(Routes=[trans.route_to_pb(r) for r in routes])), agent_pb2.Routes)
        return tuple(trans.route_from_pb(r) for r in answer.Routes)

    async def list_interfaces(self) -> tuple[Interface, ...]:
        answer = await self._call("ListInterfaces", agent_pb2.ListInterfacesRequest(), agent_pb2.Interfaces)
        return tuple(trans.interface_from_pb(i) for i in answer.Interfaces)

    async def list_routes(self) -> tuple[Route, ...]:
        answer = await self._call("ListRoutes", agent_pb2.ListRoutesRequest(), agent_pb2.Routes)
        return tuple(trans.route_from_pb(r) for r in answer.Routes)

    async def add_arp_neighbors(self, neighbors: Sequence[ARPNeighbor]) -> None:
        await self._empty("AddARPNeighbors", agent_pb2.AddARPNeighborsRequest(
            neighbors=agent_pb2.ARPNeighbors(ARPNeighbors=[trans.neighbor_to_pb(n) for n in neighbors])))

    async def get_ip_tables(self, *, ipv6: bool = False) -> bytes:
        """The guest's iptables (``ipv6``: ip6tables) rules, as iptables-save prints them.

        Raises:
            UnimplementedError: the guest has no iptables (pykata's guest image carries none).
        """
        answer = await self._call("GetIPTables", agent_pb2.GetIPTablesRequest(is_ipv6=ipv6),
                                  agent_pb2.GetIPTablesResponse)
        return answer.data

    async def set_ip_tables(self, data: bytes, *, ipv6: bool = False) -> bytes:
        """Replace the guest's iptables (``ipv6``: ip6tables) rules by ``data`` (iptables-restore input);
        what the guest's iptables-restore printed.

        Raises:
            UnimplementedError: the guest has no iptables (pykata's guest image carries none).
        """
        answer = await self._call("SetIPTables", agent_pb2.SetIPTablesRequest(is_ipv6=ipv6, data=data),
                                  agent_pb2.SetIPTablesResponse)
        return answer.data


def _check_timeout(url: str, timeout: float) -> None:
    # The ttRPC client rejects a deadline that has already passed with ValueError; callers of the
    # agent API expect AgentError for "no answer in time", which a zero budget is.
    if not timeout > 0:
        raise AgentError(f"agent at {url}: no time left to wait for an answer (timeout {timeout:g} s)")

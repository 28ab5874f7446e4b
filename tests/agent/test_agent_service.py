"""The agent's ttRPC services in host mode: a real agent process, our AgentClient, real containers."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import pytest

from kata.agent import AgentClient, ContainerRequest, ExecRequest, SandboxRequest, Storage
from kata.errors import AgentError, RpcError
from kata.oci import CPU, Process, Resources
from kata.protocols.pb import agent_pb2
from kata.ttrpc.status import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnimplementedError,
)
from tests.agent.support import BUSYBOX, make_rootfs, make_spec, run_with_agent, start_host_agent, stop_host_agent

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not BUSYBOX.exists(), reason="needs root and busybox")
T = TypeVar("T")


@dataclass(frozen=True)
class HostAgent:
    url: str
    root: Path
    rootfs: Path
    process: subprocess.Popen[bytes]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[HostAgent]:
    root, sock = tmp_path / "run", tmp_path / "agent.sock"
    rootfs = make_rootfs(tmp_path / "image")
    process = start_host_agent(sock, root)
    try:
        yield HostAgent(f"unix://{sock}", root, rootfs, process)
    finally:
        stop_host_agent(process)


def run(agent: HostAgent, scenario: Callable[[AgentClient], Awaitable[T]]) -> T:
    return run_with_agent(agent.url, scenario)


def rootfs_storage(agent: HostAgent, container_id: str) -> Storage:
    """The container's rootfs brought in as storage, as the host shares it over virtio-fs."""
    return Storage(driver="bind", source=str(agent.rootfs), fstype="bind",
                   mount_point=str(agent.root / "shared" / container_id / "rootfs"))


async def create(client: AgentClient, agent: HostAgent, cid: str, *args: str, hostname: str = "pod") -> None:
    storage = rootfs_storage(agent, cid)
    spec = replace(make_spec(Path(storage.mount_point), *args), hostname=hostname)
    await client.create_container(ContainerRequest(container_id=cid, exec_id=cid, spec=spec,
                                                   storages=(storage,)))


async def read_all(client: AgentClient, cid: str, exec_id: str) -> bytes:
    out = b""
    while chunk := await client.read_stdout(cid, exec_id):
        out += chunk
    return out


def test_health_and_version(agent: HostAgent) -> None:
    async def scenario(client: AgentClient) -> tuple[bool, str]:
        return await client.check(), (await client.version()).agent_version
    serving, version = run(agent, scenario)
    assert serving
    assert version == "0.1.0"


def test_a_timeout_that_is_not_positive_is_an_agent_error(agent: HostAgent) -> None:
    async def scenario(client: AgentClient) -> None:
        for timeout in (0.0, -1.0):
            with pytest.raises(AgentError, match="no time left"):
                await client.wait_ready(timeout)
            with pytest.raises(AgentError, match="no time left"):
                await client.check(timeout=timeout)
        assert await client.wait_ready(5) >= 0  # the connection is still good
    run(agent, scenario)


def test_update_container_reaches_the_agent(agent: HostAgent) -> None:
    async def scenario(client: AgentClient) -> None:
        await client.create_sandbox(SandboxRequest(sandbox_id="sb1"))
        await create(client, agent, "c1", "sleep", "100")
        with pytest.raises(NotFoundError):
            await client.update_container("nope", Resources())
        with pytest.raises(RpcError, match="no cgroup"):  # this agent runs without --cgroup-root
            await client.update_container("c1", Resources(cpu=CPU(shares=512)))
        await client.remove_container("c1")
    run(agent, scenario)


def test_container_runs_with_its_own_pid_namespace_hostname_and_exit_code(agent: HostAgent) -> None:
    async def scenario(client: AgentClient) -> tuple[bytes, int]:
        await client.create_sandbox(SandboxRequest(sandbox_id="sb1", hostname="sandbox-host"))
        await create(client, agent, "c1", "sh", "-c", "hostname; echo $$; id -u; exit 7", hostname="web")
        await client.start_container("c1")
        output = await read_all(client, "c1", "c1")
        status = await client.wait_process("c1", "c1")
        await client.remove_container("c1")
        return output, status
    output, status = run(agent, scenario)
    assert output.decode().split() == ["web", "1", "0"]
    assert status == 7


def test_exec_killed_by_sigkill_gives_137_and_stdin_reaches_the_process(agent: HostAgent) -> None:
    async def scenario(client: AgentClient) -> tuple[int, bytes, int]:
        await client.create_sandbox(SandboxRequest(sandbox_id="sb2"))
        await create(client, agent, "c2", "sleep", "1000")
        await client.start_container("c2")
        await client.exec_process(ExecRequest("c2", "cat", Process(args=("cat",), env=("PATH=/bin",), cwd="/")))
        await client.write_stdin("c2", "cat", b"hello from the host\n")
        await client.close_stdin("c2", "cat")
        echoed = await read_all(client, "c2", "cat")
        cat_status = await client.wait_process("c2", "cat")
        await client.signal_process("c2", "c2", signal.SIGKILL)
        status = await client.wait_process("c2", "c2")
        await client.remove_container("c2")
        return status, echoed, cat_status
    status, echoed, cat_status = run(agent, scenario)
    assert (status, echoed, cat_status) == (137, b"hello from the host\n", 0)


def test_malformed_requests_get_clear_errors_and_the_agent_keeps_serving(agent: HostAgent) -> None:
    async def scenario(client: AgentClient) -> bool:
        with pytest.raises(FailedPreconditionError, match="no sandbox"):
            await client.destroy_sandbox()
        await client.create_sandbox(SandboxRequest(sandbox_id="sb3"))
        with pytest.raises(AlreadyExistsError):
            await client.create_sandbox(SandboxRequest(sandbox_id="sb3"))
        with pytest.raises(NotFoundError, match="container nosuch: not found"):
            await client.start_container("nosuch")
        outside = make_spec(agent.rootfs, "true")  # the image dir itself lies outside the agent's root
        with pytest.raises(InvalidArgumentError, match=r"root.path .* is outside"):
            await client.create_container(ContainerRequest("c3", "c3", outside))
        escaping = Storage("bind", str(agent.rootfs), "bind", str(agent.root / ".." / "escape"))
        with pytest.raises(InvalidArgumentError, match=r"storage mount point .* is outside"):
            await client.create_container(
                ContainerRequest("c4", "c4", make_spec(agent.rootfs, "true"), storages=(escaping,)))
        with pytest.raises(UnimplementedError, match="GetIPTables: the guest image carries no iptables"):
            await client._call("GetIPTables", agent_pb2.GetIPTablesRequest(), agent_pb2.GetIPTablesResponse)
        return await client.check()
    assert run(agent, scenario)


def test_destroy_sandbox_stops_the_agent(agent: HostAgent) -> None:
    async def scenario(client: AgentClient) -> None:
        await client.create_sandbox(SandboxRequest(sandbox_id="sb4"))
        await create(client, agent, "c5", "sleep", "1000")
        await client.start_container("c5")
        await client.destroy_sandbox()
    run(agent, scenario)
    assert agent.process.wait(timeout=10) == 0

"""The Task service's bookkeeping and event order, over a fake sandbox (no VM)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from google.protobuf import any_pb2

from kata.config import Config
from kata.errors import StateError
from kata.oci import Bundle, Process, Resources
from kata.protocols.pb import cgroups_v1_metrics_pb2, events_task_pb2, shim_task_pb2
from kata.sandbox import PIPE, ContainerStats, SandboxLostError
from kata.sandbox.stdio import StdinTarget, StdoutTarget
from kata.shim.publisher import MemoryPublisher
from kata.shim.service import LOST_EXIT_STATUS, TaskService
from kata.ttrpc.status import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnimplementedError,
)

t = shim_task_pb2
VMM_PID = 4242


class FakeProcess:
    def __init__(self) -> None:
        self.exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.signals: list[int] = []
        self.sizes: list[tuple[int, int]] = []
        self.stdin: BinaryIO | None = None
        self.stdin_read = -1

    def finish(self, status: int) -> None:
        if not self.exit.done():
            self.exit.set_result(status)

    async def wait(self) -> int:
        return await asyncio.shield(self.exit)

    async def kill(self, signal: int, *, all_processes: bool = False) -> None:
        self.signals.append(signal)
        self.finish(128 + signal)

    async def resize(self, rows: int, columns: int) -> None:
        self.sizes.append((rows, columns))

    def take_stdin(self, stdin: StdinTarget) -> None:
        if stdin is PIPE:
            self.stdin_read, write = os.pipe()
            self.stdin = os.fdopen(write, "wb", buffering=0)


class FakeContainer(FakeProcess):
    def __init__(self, bundle: Bundle, stdout: StdoutTarget) -> None:
        super().__init__()
        self.bundle = bundle
        self.started = False
        self.paused = False
        self.deleted = False
        self.execs: dict[str, FakeProcess] = {}
        self.updates: list[Resources] = []
        self.exit_on_start: int | None = None
        if isinstance(stdout, int):
            with os.fdopen(os.dup(stdout), "wb") as out:  # what the relay would write
                out.write(b"hello from the fake\n")

    async def start(self) -> None:
        self.started = True
        if self.exit_on_start is not None:
            self.finish(self.exit_on_start)
            await asyncio.sleep(0.01)  # the waiter sees the exit before Start answers

    async def exec(self, command: Process, *, exec_id: str | None = None, terminal: bool = False,
                   stdin: StdinTarget = None, stdout: StdoutTarget = None, stderr: StdoutTarget = None) -> FakeProcess:
        process = FakeProcess()
        process.take_stdin(stdin)
        self.execs[exec_id or ""] = process
        return process

    async def pause(self) -> None:
        self.paused = True

    async def resume(self) -> None:
        self.paused = False

    async def stats(self) -> ContainerStats:
        return ContainerStats(cpu_usage_ns=5, cpu_user_ns=3, cpu_system_ns=2, memory_usage_bytes=4096,
                              memory_max_usage_bytes=8192, memory_limit_bytes=1 << 20, pids_current=1, pids_limit=9)

    async def update(self, resources: Resources) -> None:
        if self.exit.done():
            raise StateError("container c1: cannot update while stopped", state="stopped", required=("running",))
        self.updates.append(resources)

    async def delete(self, *, force: bool = False) -> None:
        self.deleted = True
        if self.stdin_read >= 0:
            os.close(self.stdin_read)


class FakeSandbox:
    def __init__(self, sandbox_id: str) -> None:
        self.sandbox_id = sandbox_id
        self.pids = (VMM_PID, VMM_PID + 1)
        self.containers: dict[str, FakeContainer] = {}
        self.deleted = False
        self.oom: Callable[[str], None] | None = None

    async def create_container(self, bundle: Bundle, *, container_id: str | None = None, stdin: StdinTarget = None,
                               stdout: StdoutTarget = None, stderr: StdoutTarget = None) -> FakeContainer:
        container = FakeContainer(bundle, stdout)
        container.take_stdin(stdin)
        self.containers[container_id or ""] = container
        return container

    def on_oom(self, callback: Callable[[str], None]) -> Callable[[], None]:
        self.oom = callback
        return lambda: None

    async def delete(self) -> None:
        self.deleted = True


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.publisher = MemoryPublisher()
        self.sandboxes: list[FakeSandbox] = []

        async def factory(config: Config, sandbox_id: str, bundle: Bundle) -> FakeSandbox:
            sandbox = FakeSandbox(sandbox_id)
            self.sandboxes.append(sandbox)
            return sandbox

        self.service = TaskService(self.publisher, factory=factory)

    def bundle(self, name: str, annotations: dict[str, str] | None = None) -> str:
        path = self.tmp_path / name
        (path / "rootfs").mkdir(parents=True)
        spec = {"ociVersion": "1.0.2", "process": {"args": ["sh"], "cwd": "/"}, "root": {"path": "rootfs"},
                "annotations": annotations or {}}
        (path / "config.json").write_text(json.dumps(spec))
        return str(path)

    async def create(self, cid: str, **fields: Any) -> t.CreateTaskResponse:
        return await self.service.create(t.CreateTaskRequest(id=cid, bundle=self.bundle(cid), **fields))

    def container(self, cid: str) -> FakeContainer:
        return self.sandboxes[-1].containers[cid]

    @property
    def topics(self) -> list[str]:
        return self.publisher.topics


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield Harness(tmp_path)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 10))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def resources_any(resources: dict[str, Any], kind: str = "LinuxResources") -> any_pb2.Any:
    """What containerd's WithResources sends: typeurl's JSON of specs.LinuxResources."""
    return any_pb2.Any(type_url=f"types.containerd.io/opencontainers/runtime-spec/1/{kind}",
                       value=json.dumps(resources).encode())


def exec_spec(*args: str) -> any_pb2.Any:
    return any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
                       value=json.dumps({"args": list(args), "cwd": "/"}).encode())


def test_a_task_from_create_to_shutdown(harness: Harness) -> None:
    async def scenario() -> None:
        service = harness.service
        created = await harness.create("c1")
        assert created.pid == VMM_PID
        assert (await service.state(t.StateRequest(id="c1"))).status == 1  # CREATED
        assert (await service.connect(t.ConnectRequest(id="c1"))).task_pid == VMM_PID
        waiting = asyncio.ensure_future(service.wait(t.WaitRequest(id="c1")))
        assert (await service.start(t.StartRequest(id="c1"))).pid == VMM_PID
        assert harness.container("c1").started
        await settle()
        assert not waiting.done()
        harness.container("c1").finish(3)
        assert (await waiting).exit_status == 3
        state = await service.state(t.StateRequest(id="c1"))
        assert (state.status, state.exit_status) == (3, 3)  # STOPPED
        deleted = await service.delete(t.DeleteRequest(id="c1"))
        assert (deleted.exit_status, deleted.pid) == (3, VMM_PID)
        assert harness.container("c1").deleted and harness.sandboxes[0].deleted  # the last task took the VM
        with pytest.raises(NotFoundError):
            await service.state(t.StateRequest(id="c1"))
        await service.shutdown(t.ShutdownRequest(id="c1"))
        assert service.shutdown_requested.is_set()

    run(scenario)
    assert harness.topics == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    exit_event = harness.publisher.events[2][1]
    assert isinstance(exit_event, events_task_pb2.TaskExit) and exit_event.exit_status == 3


def test_a_process_that_ends_at_once_is_reported_started_before_exited(harness: Harness) -> None:
    async def scenario() -> None:
        await harness.create("c1")
        harness.container("c1").exit_on_start = 0
        await harness.service.start(t.StartRequest(id="c1"))
        await harness.service.wait(t.WaitRequest(id="c1"))

    run(scenario)
    assert harness.topics == ["/tasks/create", "/tasks/start", "/tasks/exit"]


def test_exec_lifecycle(harness: Harness) -> None:
    async def scenario() -> None:
        service = harness.service
        await harness.create("c1")
        with pytest.raises(FailedPreconditionError):  # not running yet
            await service.exec(t.ExecProcessRequest(id="c1", exec_id="e1", spec=exec_spec("true")))
        await service.start(t.StartRequest(id="c1"))
        await service.exec(t.ExecProcessRequest(id="c1", exec_id="e1", spec=exec_spec("sh", "-c", "exit 5"),
                                                terminal=True))
        with pytest.raises(AlreadyExistsError):
            await service.exec(t.ExecProcessRequest(id="c1", exec_id="e1", spec=exec_spec("true")))
        assert (await service.state(t.StateRequest(id="c1", exec_id="e1"))).status == 1
        with pytest.raises(FailedPreconditionError):
            await service.kill(t.KillRequest(id="c1", exec_id="e1", signal=9))
        await service.start(t.StartRequest(id="c1", exec_id="e1"))
        fake = harness.container("c1").execs["e1"]
        await service.resize_pty(t.ResizePtyRequest(id="c1", exec_id="e1", width=80, height=24))
        assert fake.sizes == [(24, 80)]
        with pytest.raises(FailedPreconditionError):
            await service.delete(t.DeleteRequest(id="c1", exec_id="e1"))
        fake.finish(5)
        assert (await service.wait(t.WaitRequest(id="c1", exec_id="e1"))).exit_status == 5
        with pytest.raises(NotFoundError):  # already finished
            await service.kill(t.KillRequest(id="c1", exec_id="e1", signal=9))
        assert (await service.delete(t.DeleteRequest(id="c1", exec_id="e1"))).exit_status == 5
        with pytest.raises(NotFoundError):
            await service.state(t.StateRequest(id="c1", exec_id="e1"))

    run(scenario)
    assert harness.topics == ["/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started",
                              "/tasks/exit"]


def test_kill_pause_resume_pids_stats(harness: Harness) -> None:
    async def scenario() -> None:
        service = harness.service
        await harness.create("c1")
        await service.start(t.StartRequest(id="c1"))
        assert [p.pid for p in (await service.pids(t.PidsRequest(id="c1"))).processes] == [VMM_PID]
        await service.pause(t.PauseRequest(id="c1"))
        assert (await service.state(t.StateRequest(id="c1"))).status == 4  # PAUSED
        with pytest.raises(FailedPreconditionError):
            await service.delete(t.DeleteRequest(id="c1"))
        await service.resume(t.ResumeRequest(id="c1"))
        stats = (await service.stats(t.StatsRequest(id="c1"))).stats
        assert cgroups_v1_metrics_pb2.Metrics.FromString(stats.value).memory.usage.usage == 4096
        await service.kill(t.KillRequest(id="c1", signal=signal.SIGKILL, all=True))
        assert (await service.wait(t.WaitRequest(id="c1"))).exit_status == 137
        with pytest.raises(UnimplementedError):
            await service.checkpoint(t.CheckpointTaskRequest(id="c1"))

    run(scenario)
    assert harness.topics == ["/tasks/create", "/tasks/start", "/tasks/paused", "/tasks/resumed", "/tasks/exit"]


def test_a_lost_sandbox_ends_processes_with_255_and_oom_is_published(harness: Harness) -> None:
    async def scenario() -> None:
        await harness.create("c1")
        await harness.service.start(t.StartRequest(id="c1"))
        assert harness.sandboxes[0].oom is not None
        harness.sandboxes[0].oom("c1")
        harness.sandboxes[0].oom("not-ours")
        harness.container("c1").exit.set_exception(SandboxLostError("the VM exited"))
        assert (await harness.service.wait(t.WaitRequest(id="c1"))).exit_status == LOST_EXIT_STATUS

    run(scenario)
    assert harness.topics == ["/tasks/create", "/tasks/start", "/tasks/oom", "/tasks/exit"]


def test_create_errors_and_a_task_deleted_before_start(harness: Harness) -> None:
    async def scenario() -> None:
        service = harness.service
        await harness.create("c1")
        with pytest.raises(AlreadyExistsError):
            await service.create(t.CreateTaskRequest(id="c1", bundle=harness.bundle("again")))
        with pytest.raises(UnimplementedError):
            await service.create(t.CreateTaskRequest(id="c2", bundle=harness.bundle("c2"), checkpoint="/cp"))
        await service.shutdown(t.ShutdownRequest(id="c1"))
        assert not service.shutdown_requested.is_set()  # a task is left
        deleted = await service.delete(t.DeleteRequest(id="c1"))
        assert deleted.exit_status == 137

    run(scenario)
    assert harness.topics == ["/tasks/create", "/tasks/delete"]


def test_pod_containers_join_the_sandbox_of_their_annotations(harness: Harness) -> None:
    pod = {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "pod"}
    member = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "pod"}
    stranger = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "other"}

    async def scenario() -> None:
        service = harness.service
        with pytest.raises(NotFoundError):  # a pod's container before its sandbox
            await service.create(t.CreateTaskRequest(id="early", bundle=harness.bundle("early", member)))
        await service.create(t.CreateTaskRequest(id="pod", bundle=harness.bundle("pod", pod)))
        await service.create(t.CreateTaskRequest(id="app", bundle=harness.bundle("app", member)))
        assert len(harness.sandboxes) == 1 and set(harness.sandboxes[0].containers) == {"pod", "app"}
        with pytest.raises(FailedPreconditionError):
            await service.create(t.CreateTaskRequest(id="x", bundle=harness.bundle("x", stranger)))
        await service.delete(t.DeleteRequest(id="app"))
        assert not harness.sandboxes[0].deleted
        await service.delete(t.DeleteRequest(id="pod"))
        assert harness.sandboxes[0].deleted

    run(scenario)


def test_stdio_fifos_carry_output_and_stdin_until_close_io(harness: Harness, tmp_path: Path) -> None:
    stdin, stdout = tmp_path / "in", tmp_path / "out"
    os.mkfifo(stdin)
    os.mkfifo(stdout)

    async def scenario() -> None:
        reader = os.open(stdout, os.O_RDONLY | os.O_NONBLOCK)  # containerd's side, opened first
        writer_opened = asyncio.get_running_loop().run_in_executor(None, os.open, str(stdin), os.O_WRONLY)
        await harness.create("c1", stdin=str(stdin), stdout=str(stdout))
        assert os.read(reader, 100) == b"hello from the fake\n"
        writer = await writer_opened
        os.write(writer, b"typed\n")
        container = harness.container("c1")
        await harness.service.close_io(t.CloseIORequest(id="c1", stdin=False))
        os.close(writer)  # the client's FIFO closes; CloseIO passes on what was written, then EOF
        await harness.service.close_io(t.CloseIORequest(id="c1", stdin=True))
        data = await asyncio.get_running_loop().run_in_executor(None, os.read, container.stdin_read, 100)
        assert data == b"typed\n"
        assert os.read(container.stdin_read, 100) == b""
        await harness.service.delete(t.DeleteRequest(id="c1"))
        assert os.read(reader, 100) == b""  # our end of stdout is closed
        os.close(reader)

    run(scenario)


def test_update_passes_linux_resources_to_the_container(harness: Harness) -> None:
    async def scenario() -> None:
        service = harness.service
        await harness.create("c1")
        await service.start(t.StartRequest(id="c1"))
        limits = {"memory": {"limit": 268435456}, "cpu": {"shares": 512, "quota": 50000, "period": 100000},
                  "pids": {"limit": 64}}
        await service.update(t.UpdateTaskRequest(id="c1", resources=resources_any(limits),
                                                 annotations={"ignored": "yes"}))
        [update] = harness.container("c1").updates
        assert update.memory is not None and update.memory.limit == 268435456
        assert update.cpu is not None and (update.cpu.shares, update.cpu.quota) == (512, 50000)
        assert update.pids is not None and update.pids.limit == 64
        bad = [t.UpdateTaskRequest(id="c1"),  # no resources at all
               t.UpdateTaskRequest(id="c1", resources=resources_any({}, "WindowsResources")),
               t.UpdateTaskRequest(id="c1", resources=resources_any({"memory": {"limit": "lots"}})),
               t.UpdateTaskRequest(id="c1", resources=any_pb2.Any(
                   type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources", value=b"{"))]
        for request in bad:
            with pytest.raises(InvalidArgumentError):
                await service.update(request)
        with pytest.raises(NotFoundError):
            await service.update(t.UpdateTaskRequest(id="nope", resources=resources_any(limits)))
        await service.kill(t.KillRequest(id="c1", signal=signal.SIGKILL))
        await service.wait(t.WaitRequest(id="c1"))
        with pytest.raises(FailedPreconditionError):  # the library's StateError, as containerd reads it
            await service.update(t.UpdateTaskRequest(id="c1", resources=resources_any(limits)))
        assert len(harness.container("c1").updates) == 1

    run(scenario)

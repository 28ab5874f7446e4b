"""The containerd.task.v2.Task service: 17 RPCs over the sandbox library, events in order."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Any, TypeVar

from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message

from kata.config import Config, apply_annotations, load_config
from kata.errors import KataError
from kata.log import fields
from kata.oci import Bundle, load_bundle
from kata.protocols.pb import containerd_task_types_pb2, shim_task_pb2
from kata.sandbox import SandboxLostError
from kata.shim import translate
from kata.shim.backend import SandboxFactory, SandboxHandle, SandboxWatcher, create_sandbox
from kata.shim.options import config_path_from_any
from kata.shim.pod import membership
from kata.shim.publisher import Publisher
from kata.shim.rootfs import mount_all, unmount_all
from kata.shim.stdio import ProcessStdio
from kata.shim.tasks import ProcessStatus, Task, TaskProcess, TaskTable
from kata.ttrpc.dispatch import CallContext, MethodSpec
from kata.ttrpc.status import (
    AlreadyExistsError,
    FailedPreconditionError,
    NotFoundError,
    UnimplementedError,
)

__all__ = ["LOST_EXIT_STATUS", "TaskService"]

_log = logging.getLogger("kata.shim")
_P = ProcessStatus
t = shim_task_pb2
EMPTY = empty_pb2.Empty
M = TypeVar("M", bound=Message)
LOST_EXIT_STATUS = 255  # as Kata: a process whose VM or agent went away has no real exit status
UNSTARTED_EXIT_STATUS = 128 + signal.SIGKILL  # a task deleted before it ever ran


def _rpc(handler: Callable[[Any, Any], Awaitable[M]]) -> Callable[..., Awaitable[M]]:
    """A handler (taking the request; the router also passes the call context) whose pykata errors
    reach containerd as the gRPC codes its errdefs understand."""
    @functools.wraps(handler)
    async def call(self: Any, request: Any, context: CallContext | None = None) -> M:
        try:
            return await handler(self, request)
        except KataError as exc:
            error = translate.status_error(exc)
            if error is not exc:
                raise error from exc
            raise
    return call


class TaskService:
    """One shim's tasks: the sandbox (made by the first Create), its containers, their processes.

    ``publisher`` receives the task events; ``shutdown_requested`` is set when Shutdown finds no task
    left (the daemon then exits); ``watchers`` are told when the sandbox is made and before it goes.
    """

    def __init__(self, publisher: Publisher, *, namespace: str = "default", config_path: str = "",
                 factory: SandboxFactory | None = None) -> None:
        self.publisher = publisher
        self.namespace = namespace
        self.config_path = config_path
        self.shutdown_requested = asyncio.Event()
        self._factory = factory or create_sandbox()
        self._tasks = TaskTable()
        self._sandbox: SandboxHandle | None = None
        self._unsubscribe_oom: Callable[[], None] | None = None
        self._lock = asyncio.Lock()  # sandbox creation and removal, one at a time
        self.watchers: list[SandboxWatcher] = []

    @property
    def sandbox(self) -> SandboxHandle | None:
        """The sandbox, once the first task made it."""
        return self._sandbox

    @property
    def tasks(self) -> TaskTable:
        """The tasks (read them; the RPCs change them)."""
        return self._tasks

    def methods(self) -> dict[str, MethodSpec]:
        """The method table of containerd.task.v2.Task for a Router."""
        return {
            "State": (t.StateRequest, t.StateResponse, self.state),
            "Create": (t.CreateTaskRequest, t.CreateTaskResponse, self.create),
            "Start": (t.StartRequest, t.StartResponse, self.start),
            "Delete": (t.DeleteRequest, t.DeleteResponse, self.delete),
            "Pids": (t.PidsRequest, t.PidsResponse, self.pids),
            "Pause": (t.PauseRequest, EMPTY, self.pause),
            "Resume": (t.ResumeRequest, EMPTY, self.resume),
            "Checkpoint": (t.CheckpointTaskRequest, EMPTY, self.checkpoint),
            "Kill": (t.KillRequest, EMPTY, self.kill),
            "Exec": (t.ExecProcessRequest, EMPTY, self.exec),
            "ResizePty": (t.ResizePtyRequest, EMPTY, self.resize_pty),
            "CloseIO": (t.CloseIORequest, EMPTY, self.close_io),
            "Update": (t.UpdateTaskRequest, EMPTY, self.update),
            "Wait": (t.WaitRequest, t.WaitResponse, self.wait),
            "Stats": (t.StatsRequest, t.StatsResponse, self.stats),
            "Connect": (t.ConnectRequest, t.ConnectResponse, self.connect),
            "Shutdown": (t.ShutdownRequest, EMPTY, self.shutdown),
        }

    # helpers

    def _publish(self, event: translate.Event) -> None:
        self.publisher.publish(*event)

    def _pid(self) -> int:
        """The host pid containerd gets for every process: the VMM's, as Kata reports (else ours)."""
        pids = self._sandbox.pids if self._sandbox is not None else ()
        return pids[0] if pids else os.getpid()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro, name=name)

    async def _watch(self, process: TaskProcess, wait: Callable[[], Awaitable[int]]) -> None:
        """Wait for ``process`` to end; record its exit and publish TaskExit (after its start event)."""
        try:
            status = await wait()
        except SandboxLostError as exc:
            _log.warning("process lost with its sandbox: %s", exc, extra=fields(container=process.container_id,
                                                                               exec_id=process.exec_id))
            status = LOST_EXIT_STATUS
        except KataError as exc:
            _log.warning("wait failed: %s", exc, extra=fields(container=process.container_id, exec_id=process.exec_id))
            status = LOST_EXIT_STATUS
        async with process.start_lock:
            if process.set_exit(status):
                self._publish(translate.exit_event(process))

    def _on_oom(self, container_id: str) -> None:
        if container_id in self._tasks:
            self._publish(translate.oom_event(container_id))

    def _config(self, options: any_pb2.Any, annotations: dict[str, str]) -> Config:
        path = config_path_from_any(options) or self.config_path
        return apply_annotations(load_config(path or None).config, annotations)

    # Create and its steps

    @_rpc
    async def create(self, request: shim_task_pb2.CreateTaskRequest) -> shim_task_pb2.CreateTaskResponse:
        """Mount the rootfs on the bundle, make the sandbox (first task) and the container; TaskCreate."""
        if request.id in self._tasks:
            raise AlreadyExistsError(f"task {request.id} already exists")
        if request.checkpoint:
            raise UnimplementedError("create from a checkpoint: checkpoint/restore is not supported")
        bundle = load_bundle(request.bundle)
        paths = translate.stdio_paths(request)
        async with self._lock, AsyncExitStack() as stack:
            rootfs = self._mount_rootfs(stack, request)
            sandbox = await self._sandbox_for(stack, request, bundle)
            stdio = await ProcessStdio.open(paths, container_id=request.id, namespace=self.namespace)
            stack.push_async_callback(stdio.close)
            container = await sandbox.create_container(bundle, container_id=request.id, stdin=stdio.stdin,
                                                       stdout=stdio.stdout, stderr=stdio.stderr)
            stdio.attach(container.stdin)
            stack.pop_all()
        init = TaskProcess(request.id, "", paths, pid=self._pid())
        init.host_io = stdio
        task = Task(container, init, bundle=request.bundle, rootfs_mounted=rootfs)
        self._tasks.add(task)
        self._publish(translate.create_event(request, init.pid))
        init.waiter = self._spawn(self._watch(init, container.wait), f"wait-{request.id[:12]}")
        _log.info("task created", extra=fields(container=request.id, sandbox=sandbox.sandbox_id))
        return t.CreateTaskResponse(pid=init.pid)

    def _mount_rootfs(self, stack: AsyncExitStack, request: shim_task_pb2.CreateTaskRequest) -> str:
        if not request.rootfs:
            return ""
        target = os.path.join(request.bundle, "rootfs")
        os.makedirs(target, exist_ok=True)
        mount_all(translate.rootfs_mounts(request.rootfs), target)
        stack.callback(unmount_all, target)
        return target

    async def _sandbox_for(self, stack: AsyncExitStack, request: shim_task_pb2.CreateTaskRequest,
                           bundle: Bundle) -> SandboxHandle:
        member = membership(request.id, bundle.spec.annotations)
        if self._sandbox is not None:
            if member.sandbox_id != self._sandbox.sandbox_id:
                raise FailedPreconditionError(f"task {request.id} belongs to sandbox {member.sandbox_id}; this "
                                              f"shim serves {self._sandbox.sandbox_id}")
            return self._sandbox
        if member.joins:
            raise NotFoundError(f"sandbox {member.sandbox_id} of task {request.id} is not served by this shim")
        config = self._config(request.options, dict(bundle.spec.annotations))
        sandbox = await self._factory(config, member.sandbox_id, bundle)
        self._sandbox = sandbox
        stack.push_async_callback(self._drop_sandbox)
        self._unsubscribe_oom = sandbox.on_oom(self._on_oom)
        for watcher in self.watchers:
            await watcher.sandbox_started(sandbox)
        return sandbox

    async def _drop_sandbox(self) -> None:
        sandbox, self._sandbox = self._sandbox, None
        if self._unsubscribe_oom is not None:
            self._unsubscribe_oom()
            self._unsubscribe_oom = None
        if sandbox is not None:
            for watcher in self.watchers:
                await watcher.sandbox_stopping(sandbox)
            await sandbox.delete()

    # the other RPCs

    @_rpc
    async def start(self, request: shim_task_pb2.StartRequest) -> shim_task_pb2.StartResponse:
        """Start init or a created exec; TaskStart or TaskExecStarted."""
        task = self._tasks.get(request.id)
        process = task.process(request.exec_id)
        async with process.start_lock:
            if process.status is not _P.CREATED:
                raise FailedPreconditionError(f"process {process.id} is {process.status.value}, not created")
            if request.exec_id:
                await self._start_exec(task, process)
            else:
                await task.container.start()
            process.status = _P.RUNNING
            self._publish(translate.start_event(process))
        return t.StartResponse(pid=process.pid)

    async def _start_exec(self, task: Task, process: TaskProcess) -> None:
        assert process.process is not None
        stdio = await ProcessStdio.open(process.stdio, container_id=task.id, namespace=self.namespace)
        try:
            handle = await task.container.exec(process.process, exec_id=process.exec_id,
                                               terminal=process.stdio.terminal, stdin=stdio.stdin,
                                               stdout=stdio.stdout, stderr=stdio.stderr)
        except BaseException:
            await stdio.close()
            raise
        stdio.attach(handle.stdin)
        process.handle, process.host_io = handle, stdio
        process.waiter = self._spawn(self._watch(process, handle.wait), f"wait-{process.exec_id[:12]}")

    @_rpc
    async def delete(self, request: shim_task_pb2.DeleteRequest) -> shim_task_pb2.DeleteResponse:
        """Delete an exited exec, or an exited (or never started) task: TaskDelete. The last task
        (or the pod's sandbox container) takes the sandbox with it."""
        task = self._tasks.get(request.id)
        process = task.process(request.exec_id)
        if process.status in (_P.RUNNING, _P.PAUSED):
            raise FailedPreconditionError(f"process {process.id} is {process.status.value}: kill it first")
        await self._release(process)
        process.set_exit(UNSTARTED_EXIT_STATUS)
        assert process.exit is not None
        if request.exec_id:
            task.execs.pop(request.exec_id, None)
        else:
            async with self._lock:
                await self._remove(task)
            self._publish(translate.delete_event(process, process.exit))
        return translate.delete_response(process.pid, process.exit)

    async def _release(self, process: TaskProcess) -> None:
        if process.waiter is not None and not process.waiter.done():
            process.waiter.cancel()
        if process.host_io is not None:
            await process.host_io.close()

    async def _remove(self, task: Task) -> None:
        for process in task.processes():
            await self._release(process)
        if self._sandbox is not None:
            await _quietly(task.container.delete(force=True), f"delete container {task.id}")
        if task.rootfs_mounted:  # containerd unmounts it again when it removes the bundle
            await _quietly(asyncio.to_thread(unmount_all, task.rootfs_mounted), f"unmount {task.rootfs_mounted}")
        self._tasks.remove(task.id)
        if self._sandbox is not None and (task.id == self._sandbox.sandbox_id or not len(self._tasks)):
            await self._drop_sandbox()
        _log.info("task deleted", extra=fields(container=task.id))

    @_rpc
    async def kill(self, request: shim_task_pb2.KillRequest) -> empty_pb2.Empty:
        """Signal init (every process with ``all``) or an exec."""
        task = self._tasks.get(request.id)
        process = task.process(request.exec_id)
        if process.exit is not None:
            raise NotFoundError(f"process {process.id} already finished")
        if not request.exec_id:
            await task.container.kill(request.signal, all_processes=request.all)
        elif process.handle is None:
            raise FailedPreconditionError(f"exec {process.exec_id} is not started")
        else:
            await process.handle.kill(request.signal)
        return EMPTY()

    @_rpc
    async def exec(self, request: shim_task_pb2.ExecProcessRequest) -> empty_pb2.Empty:
        """Add an exec (it runs on Start); TaskExecAdded."""
        task = self._tasks.get(request.id)
        if task.init.status is not _P.RUNNING:
            raise FailedPreconditionError(f"task {task.id} is {task.init.status.value}, not running")
        process = TaskProcess(task.id, request.exec_id, translate.stdio_paths(request), pid=self._pid(),
                              process=translate.exec_process(request.spec, request.terminal))
        task.add_exec(process)
        self._publish(translate.exec_added_event(process))
        return EMPTY()

    @_rpc
    async def resize_pty(self, request: shim_task_pb2.ResizePtyRequest) -> empty_pb2.Empty:
        """Set a terminal's size (height rows, width columns)."""
        task = self._tasks.get(request.id)
        process = task.process(request.exec_id)
        if not request.exec_id:
            await task.container.resize(request.height, request.width)
        elif process.handle is not None:
            await process.handle.resize(request.height, request.width)
        return EMPTY()

    @_rpc
    async def close_io(self, request: shim_task_pb2.CloseIORequest) -> empty_pb2.Empty:
        """Close a process's stdin once what its FIFO got has been passed on."""
        process = self._tasks.process(request.id, request.exec_id)
        if request.stdin and process.host_io is not None:
            await process.host_io.close_stdin()
        return EMPTY()

    @_rpc
    async def update(self, request: shim_task_pb2.UpdateTaskRequest) -> empty_pb2.Empty:
        """Apply new cgroup limits to a created or running task (annotations are ignored, as by Kata)."""
        task = self._tasks.get(request.id)
        await task.container.update(translate.update_resources(request.resources))
        return EMPTY()

    @_rpc
    async def wait(self, request: shim_task_pb2.WaitRequest) -> shim_task_pb2.WaitResponse:
        """Block until the process exits."""
        process = self._tasks.process(request.id, request.exec_id)
        return translate.wait_response(await process.wait())

    @_rpc
    async def state(self, request: shim_task_pb2.StateRequest) -> shim_task_pb2.StateResponse:
        """A process's status, stdio and exit."""
        task = self._tasks.get(request.id)
        return translate.state_response(task.process(request.exec_id), task.bundle)

    @_rpc
    async def pids(self, request: shim_task_pb2.PidsRequest) -> shim_task_pb2.PidsResponse:
        """The host processes of the task: the VMM (container processes live in the guest)."""
        self._tasks.get(request.id)
        return t.PidsResponse(processes=[containerd_task_types_pb2.ProcessInfo(pid=self._pid())])

    @_rpc
    async def pause(self, request: shim_task_pb2.PauseRequest) -> empty_pb2.Empty:
        """Freeze the container in the guest; TaskPaused."""
        task = self._tasks.get(request.id)
        await task.container.pause()
        task.init.status = _P.PAUSED
        self._publish(translate.paused_event(task.id))
        return EMPTY()

    @_rpc
    async def resume(self, request: shim_task_pb2.ResumeRequest) -> empty_pb2.Empty:
        """Thaw it; TaskResumed."""
        task = self._tasks.get(request.id)
        await task.container.resume()
        if task.init.exit is None:
            task.init.status = _P.RUNNING
        self._publish(translate.resumed_event(task.id))
        return EMPTY()

    @_rpc
    async def checkpoint(self, request: shim_task_pb2.CheckpointTaskRequest) -> empty_pb2.Empty:
        """Not supported: a VM's container cannot be checkpointed with CRIU."""
        raise UnimplementedError(f"checkpoint of task {request.id}: checkpoint/restore is not supported")

    @_rpc
    async def stats(self, request: shim_task_pb2.StatsRequest) -> shim_task_pb2.StatsResponse:
        """cgroup metrics of the container in the guest (io.containerd.cgroups.v1.Metrics)."""
        task = self._tasks.get(request.id)
        return t.StatsResponse(stats=translate.metrics(await task.container.stats()))

    @_rpc
    async def connect(self, request: shim_task_pb2.ConnectRequest) -> shim_task_pb2.ConnectResponse:
        """The shim's pid and the task's (the VMM's)."""
        return t.ConnectResponse(shim_pid=os.getpid(), task_pid=self._pid())

    @_rpc
    async def shutdown(self, request: shim_task_pb2.ShutdownRequest) -> empty_pb2.Empty:
        """With no task left: remove the sandbox and let the daemon exit; otherwise nothing."""
        if len(self._tasks):
            return EMPTY()
        async with self._lock:
            await self._drop_sandbox()
        self.shutdown_requested.set()
        return EMPTY()

    async def close(self) -> None:
        """Remove every task and the sandbox (the daemon was told to stop)."""
        async with self._lock:
            for task in self._tasks:
                await _quietly(self._remove(task), f"remove task {task.id}")
            await _quietly(self._drop_sandbox(), "delete sandbox")


async def _quietly(awaitable: Awaitable[None], what: str) -> None:
    """Cleanup that must go on: a failure is logged."""
    try:
        await awaitable
    except KataError as exc:
        _log.warning("%s: %s", what, exc)


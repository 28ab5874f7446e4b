"""What the shim remembers of the tasks containerd created: processes, their stdio paths and exits."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from kata.oci import Process
from kata.ttrpc.status import AlreadyExistsError, NotFoundError

if TYPE_CHECKING:
    from kata.shim.backend import ContainerHandle, ExecHandle

__all__ = ["Exit", "HostIo", "ProcessStatus", "StdioPaths", "Task", "TaskProcess", "TaskTable"]


class ProcessStatus(enum.Enum):
    """A process as containerd sees it (containerd.v1.types.Status without unknown/pausing)."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(frozen=True)
class StdioPaths:
    """The stdio containerd asked for: FIFO paths or ``file://``/``binary://`` URIs, "" when unused."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


@dataclass(frozen=True)
class Exit:
    """How and when a process ended (``at`` in seconds since the epoch)."""

    status: int
    at: float


class HostIo(Protocol):
    """The host end of a process's stdio (FIFOs opened, a logging binary started): see kata.shim.stdio."""

    async def close_stdin(self) -> None:
        """Let the process see EOF once what was written to the stdin FIFO has been passed on."""

    async def close(self) -> None:
        """Release everything (idempotent)."""


class TaskProcess:
    """One process containerd knows of: a task's init (``exec_id`` "") or an exec in it."""

    def __init__(self, container_id: str, exec_id: str, stdio: StdioPaths, *, pid: int = 0,
                 process: Process | None = None) -> None:
        self.container_id = container_id
        self.exec_id = exec_id
        self.stdio = stdio
        self.pid = pid
        self.process = process  # what an exec will run (None for init: the bundle says)
        self.status = ProcessStatus.CREATED
        self.exit: Exit | None = None
        self.handle: ExecHandle | None = None
        self.host_io: HostIo | None = None
        self.waiter: asyncio.Task[None] | None = None
        # Held by Start until TaskStart/TaskExecStarted is published, and by the exit path before
        # TaskExit: a process that ends at once is never reported exited before it is reported started.
        self.start_lock = asyncio.Lock()
        self._exited = asyncio.Event()

    @property
    def id(self) -> str:
        """The exec id, or the container id for init (as TaskExit's ``id``)."""
        return self.exec_id or self.container_id

    def set_exit(self, status: int, at: float | None = None) -> bool:
        """Record the exit (the first one wins); whether this call recorded it."""
        if self.exit is not None:
            return False
        self.exit = Exit(status, time.time() if at is None else at)
        self.status = ProcessStatus.STOPPED
        self._exited.set()
        return True

    async def wait(self) -> Exit:
        """The exit, once there is one."""
        await self._exited.wait()
        assert self.exit is not None
        return self.exit


@dataclass
class Task:
    """A container containerd created through this shim: its init and execs."""

    container: ContainerHandle
    init: TaskProcess
    bundle: str
    rootfs_mounted: str = ""  # <bundle>/rootfs when we mounted containerd's rootfs there
    execs: dict[str, TaskProcess] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The container id."""
        return self.init.container_id

    def process(self, exec_id: str) -> TaskProcess:
        """Init for "", else the exec.

        Raises:
            NotFoundError: no such exec.
        """
        if not exec_id:
            return self.init
        try:
            return self.execs[exec_id]
        except KeyError:
            raise NotFoundError(f"exec {exec_id} of task {self.id} not found") from None

    def add_exec(self, process: TaskProcess) -> None:
        """Remember a new exec.

        Raises:
            AlreadyExistsError: the exec id is in use.
        """
        if process.exec_id in self.execs:
            raise AlreadyExistsError(f"exec {process.exec_id} of task {self.id} already exists")
        self.execs[process.exec_id] = process

    def processes(self) -> Iterator[TaskProcess]:
        """Init, then every exec."""
        yield self.init
        yield from self.execs.values()


class TaskTable:
    """The tasks of this shim by container id."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(list(self._tasks.values()))

    def get(self, container_id: str) -> Task:
        """The task of that container.

        Raises:
            NotFoundError: there is none.
        """
        try:
            return self._tasks[container_id]
        except KeyError:
            raise NotFoundError(f"task {container_id} not found") from None

    def process(self, container_id: str, exec_id: str) -> TaskProcess:
        """A task's init ("") or exec.

        Raises:
            NotFoundError: no such task or exec.
        """
        return self.get(container_id).process(exec_id)

    def add(self, task: Task) -> None:
        """Remember a created task."""
        self._tasks[task.id] = task

    def remove(self, container_id: str) -> None:
        """Forget a deleted task."""
        self._tasks.pop(container_id, None)

    def __contains__(self, container_id: object) -> bool:
        return container_id in self._tasks

"""One container: its plan, cgroup, init and exec'd processes, state machine and teardown."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass

from kata.guest.runtime.errors import (
    CgroupError,
    ExecError,
    ProcessExistsError,
    ProcessNotFoundError,
    RemoveTimeoutError,
)
from kata.guest.runtime.launch import FAILED_CHILD_GRACE
from kata.guest.runtime.state import ContainerState, ProcessState, advance, require

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kata.guest.runtime.cgroups import Cgroup
    from kata.guest.runtime.launch import InitLaunch
    from kata.guest.runtime.plan import ContainerPlan
    from kata.guest.runtime.process import ContainerProcess

__all__ = ["Container", "ContainerInfo", "ProcessInfo"]


@dataclass(frozen=True)
class ProcessInfo:
    """A snapshot of one process: ``pid`` as the agent sees it, ``exit_status`` once exited."""

    exec_id: str
    pid: int
    state: ProcessState
    exit_status: int | None
    terminal: bool


@dataclass(frozen=True)
class ContainerInfo:
    """A snapshot of one container."""

    container_id: str
    state: ContainerState
    pid: int  # init, as the agent sees it
    exit_status: int | None
    cgroup_path: str | None
    exec_ids: tuple[str, ...]


def _signal_handled(pid: int, number: int) -> bool:
    """Whether ``pid`` catches signal ``number`` (SigCgt in /proc/<pid>/status)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (number - 1)))
    except OSError:
        pass
    return False


def _kill(pid: int, number: int) -> None:
    try:  # noqa: SIM105 - contextlib is one more import paid at every boot
        os.kill(pid, number)
    except ProcessLookupError:
        pass  # exited meanwhile: nothing to signal


class Container:
    """A container and its processes; every verb checks the state first (under ``lock``)."""

    def __init__(self, plan: ContainerPlan, cgroup: Cgroup | None, launch: InitLaunch) -> None:
        self.id = plan.container_id
        self.plan = plan
        self.cgroup = cgroup
        self.init = launch.process
        self.lock = threading.Lock()
        self._launch = launch
        self._execs: dict[str, ContainerProcess] = {}
        self._reserved: set[str] = set()
        self._state = ContainerState.CREATED

    @property
    def state(self) -> ContainerState:
        """The current state (STOPPED as soon as init's exit is known)."""
        if self._state is not ContainerState.STOPPED and self.init.state is ProcessState.EXITED:
            self._state = advance(f"container {self.id}", self._state, ContainerState.STOPPED)
        return self._state

    def info(self) -> ContainerInfo:
        """A snapshot for state queries."""
        return ContainerInfo(container_id=self.id, state=self.state, pid=self.init.pid,
                             exit_status=self.init.exit_status,
                             cgroup_path=self.cgroup.path if self.cgroup else None,
                             exec_ids=tuple(self._execs))

    def process(self, exec_id: str) -> ContainerProcess:
        """Init for "" (or the container's own id), else the exec'd process.

        Raises:
            ProcessNotFoundError: for an unknown exec id.
        """
        if exec_id in ("", self.id):
            return self.init
        process = self._execs.get(exec_id)
        if process is None:
            raise ProcessNotFoundError(self.id, exec_id)
        return process

    def start(self) -> None:
        """Release init into execve.

        Raises:
            StateError: unless CREATED.
            ExecError: when execve failed (the container is then STOPPED with status 127 or 126).
            SetupError: when init failed otherwise.
        """
        with self.lock:
            require(f"start container {self.id}", self.state, ContainerState.CREATED)
            try:
                self._launch.start()
            except ExecError:
                self.init.latch.wait(FAILED_CHILD_GRACE)
                self._state = advance(f"container {self.id}", self._state, ContainerState.STOPPED)
                raise
            self.init.mark_running()
            self._state = advance(f"container {self.id}", self._state, ContainerState.RUNNING)

    def reserve_exec(self, exec_id: str) -> None:
        """Claim ``exec_id`` for an exec being launched (outside the lock: it may take a while).

        Raises:
            StateError: unless CREATED or RUNNING.
            ProcessExistsError: when the id is taken.
        """
        with self.lock:
            require(f"exec in container {self.id}", self.state, ContainerState.CREATED,
                    ContainerState.RUNNING)
            if exec_id in ("", self.id) or exec_id in self._execs or exec_id in self._reserved:
                raise ProcessExistsError(self.id, exec_id)
            self._reserved.add(exec_id)

    def finish_exec(self, exec_id: str, process: ContainerProcess | None) -> None:
        """Record the launched process (None: the launch failed) and release the reservation."""
        with self.lock:
            self._reserved.discard(exec_id)
            if process is not None:
                self._execs[exec_id] = process

    def release_if_done(self, process: ContainerProcess) -> None:
        """Forget an exec'd process once it was waited for and its output read to EOF.

        Kata's agent forgets it at WaitProcess; a probe exec'd every few seconds must not leak fds.
        """
        if process is self.init or not (process.waited and process.stdio.drained):
            return
        with self.lock:
            if self._execs.get(process.exec_id) is not process:
                return  # another thread released it
            del self._execs[process.exec_id]
        process.close()

    def signal(self, exec_id: str, number: int) -> None:
        """Signal one process, or with ``exec_id`` "" init and then every process of the container.

        As Kata's agent does, SIGTERM to an init that does not catch it becomes SIGKILL: the kernel
        would drop it (a pid namespace's init only gets the signals it handles).

        Raises:
            ProcessNotFoundError: for an unknown exec id.
        """
        process = self.process(exec_id)
        if process.state is ProcessState.EXITED:
            return
        if process is self.init and number == signal.SIGTERM and not _signal_handled(process.pid, number):
            number = signal.SIGKILL
        _kill(process.pid, number)
        if exec_id == "":
            for pid in self.pids():
                if pid != process.pid:
                    _kill(pid, number)

    def pids(self) -> tuple[int, ...]:
        """Every process of the container (the cgroup's, or the ones the runtime started)."""
        if self.cgroup is not None:
            return self.cgroup.pids()
        processes = [self.init, *self._execs.values()]
        return tuple(p.pid for p in processes if p.state is not ProcessState.EXITED and p.pid > 0)

    def pause(self) -> None:
        """Freeze the container.

        Raises:
            StateError: unless RUNNING.
            CgroupError: without a cgroup, or when it does not freeze.
        """
        with self.lock:
            require(f"pause container {self.id}", self.state, ContainerState.RUNNING)
            self._require_cgroup("pause").freeze()
            self._state = advance(f"container {self.id}", self._state, ContainerState.PAUSED)

    def resume(self) -> None:
        """Thaw the container.

        Raises:
            StateError: unless PAUSED.
            CgroupError: when the cgroup cannot be thawed.
        """
        with self.lock:
            require(f"resume container {self.id}", self.state, ContainerState.PAUSED)
            self._require_cgroup("resume").thaw()
            self._state = advance(f"container {self.id}", self._state, ContainerState.RUNNING)

    def _require_cgroup(self, verb: str) -> Cgroup:
        if self.cgroup is None:
            raise CgroupError(f"{verb} container {self.id}: the container has no cgroup")
        return self.cgroup

    def destroy(self, timeout: float) -> None:
        """SIGKILL every process, wait for them (``timeout`` seconds, 0: no limit), remove the cgroup.

        Raises:
            RemoveTimeoutError: when a process outlives the timeout (the container stays).
            CgroupError: when the cgroup cannot be removed.
        """
        with self.lock:
            self._launch.abandon()
            if self.cgroup is not None:
                self.cgroup.kill()
                if self._state is ContainerState.PAUSED:
                    self.cgroup.thaw()
            for process in (self.init, *self._execs.values()):
                if process.state is not ProcessState.EXITED and process.pid > 0:
                    _kill(process.pid, signal.SIGKILL)
            deadline = None if timeout <= 0 else time.monotonic() + timeout
            for process in (self.init, *self._execs.values()):
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if process.latch.wait(left) is None:
                    raise RemoveTimeoutError(
                        f"remove container {self.id}: process {process.exec_id!r} still running "
                        f"after {timeout:g} s")
            if self.cgroup is not None:
                self.cgroup.remove()
            self._launch.close()
            for process in (self.init, *self._execs.values()):
                process.close()

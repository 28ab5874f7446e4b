"""The OCI verbs over the sandbox daemon: ``create`` starts the daemon and asks it for the container;
every later verb is a call on the daemon's socket (containerd.task.v2.Task)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf import any_pb2
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message

from kata.errors import KataError
from kata.oci_cli.client import TaskClient
from kata.oci_cli.errors import ContainerNotFoundError, OciCliError
from kata.oci_cli.jsonfile import load_object
from kata.oci_cli.layout import (
    ContainerPaths,
    ContainerRecord,
    check_container_id,
    container_ids,
    now_rfc3339,
    process_start_time,
)
from kata.oci_cli.statejson import oci_state, owner_of
from kata.protocols.pb import shim_task_pb2 as task
from kata.ttrpc.status import ConnectionClosedError, FailedPreconditionError, NotFoundError

if TYPE_CHECKING:  # create and exec only: the other verbs do not pay for the proxy's imports
    from kata.oci_cli.launch import ProcessLaunch

__all__ = ["CREATE_TIMEOUT", "ContainerState", "OciRuntime"]

M = TypeVar("M", bound=Message)
CREATE_TIMEOUT = 300.0  # the first container boots the VM: seconds under TCG
DELETE_TIMEOUT = 60.0
KILL_WAIT = 10.0  # delete --force: how long a SIGKILLed container gets to be reported gone
DAEMON_EXIT_TIMEOUT = 10.0
# containerd's typeurl for an OCI LinuxResources, which the shim's Update takes as JSON
LINUX_RESOURCES_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
_STATUS_NAMES = {0: "unknown", 1: "created", 2: "running", 3: "stopped", 4: "paused", 5: "pausing"}


@dataclass(frozen=True)
class ContainerState:
    """What ``state`` knows: the record, the status and the pid to report."""

    record: ContainerRecord
    status: str
    pid: int

    def to_json(self) -> dict[str, object]:
        """runc's state JSON."""
        return oci_state(self.record, self.status, self.pid)


@dataclass(frozen=True)
class OciRuntime:
    """The containers under ``root`` (runc's --root), and how new daemons are started: their sandboxes'
    state goes under ``sandbox_root`` (kata.sandbox's root, short enough for the VM's unix sockets even
    when containerd's --root and a 64-digit id are not)."""

    root: Path
    sandbox_root: Path = Path("/run/kata")
    config_path: str | None = None
    debug: bool = False

    def paths(self, container_id: str) -> ContainerPaths:
        """The files of a container (the id is checked)."""
        return ContainerPaths(self.root, check_container_id(container_id))

    def record(self, container_id: str) -> ContainerRecord:
        """The container's record.

        Raises:
            ContainerNotFoundError: no such container.
        """
        return ContainerRecord.load(self.paths(container_id))

    @contextlib.contextmanager
    def client(self, container_id: str) -> Iterator[TaskClient]:
        """A connection to the container's daemon.

        Raises:
            ContainerNotFoundError: no such container.
            OciCliError: its daemon does not answer.
        """
        paths = self.paths(container_id)
        if not paths.record.exists():
            raise ContainerNotFoundError(container_id)
        try:
            connection = TaskClient.connect(str(paths.socket))
        except OSError as exc:
            raise OciCliError(f"container {container_id}: sandbox daemon not answering: "
                              f"{exc.strerror or exc}") from exc
        with connection:
            yield connection

    def call(self, container_id: str, method: str, request: Message, response_type: type[M],
             timeout: float | None = 60.0) -> M:
        """One call on the container's daemon (see :meth:`client`)."""
        with self.client(container_id) as client:
            return client.call(method, request, response_type, timeout=timeout)

    # create / start / run

    def create(self, container_id: str, bundle: str, *, pid_file: str | None, console_socket: str | None,
               detach: bool = True) -> tuple[ProcessLaunch, ContainerRecord]:
        """Start the sandbox daemon, fork the init's proxy (``detach``; else this process will be it) and
        create the container (VM booted, init not started). A failure leaves nothing behind.

        Raises:
            OciCliError: the id is taken, the bundle unreadable, the daemon could not start.
            RpcError: the daemon refused the container (bad spec, VM failed to boot, ...).
        """
        from kata.oci_cli.daemon import spawn_daemon
        from kata.oci_cli.launch import ProcessLaunch, check_terminal, write_pid_file

        paths = self.paths(container_id)
        bundle = os.path.abspath(bundle)
        spec = _read_spec(bundle)
        terminal = bool((spec.get("process") or {}).get("terminal"))
        check_terminal(terminal, console_socket, detach)
        _make_directory(paths)
        with ExitStack() as undo:
            undo.callback(self._remove, paths)
            record = ContainerRecord(id=container_id, bundle=bundle, rootfs=_rootfs(bundle, spec),
                                     created=now_rfc3339(), annotations=_annotations(spec),
                                     sandbox_root=str(self.sandbox_root))
            record.daemon_pid = spawn_daemon(paths, sandbox_root=record.sandbox_root, config_path=self.config_path,
                                             debug=self.debug)
            record.daemon_start = process_start_time(record.daemon_pid)
            undo.callback(self._stop_daemon, record)
            record.save(paths)
            launch = ProcessLaunch(paths.io_dir(""), terminal=terminal, console_socket=console_socket, detach=detach)
            undo.callback(launch.abandon)
            record.pid = launch.fork(str(paths.socket), container_id, "") if detach else os.getpid()
            record.pid_start = process_start_time(record.pid)
            stdin, stdout, stderr = launch.paths
            request = task.CreateTaskRequest(id=container_id, bundle=bundle, terminal=terminal, stdin=stdin,
                                             stdout=stdout, stderr=stderr)
            self.call(container_id, "Create", request, task.CreateTaskResponse, timeout=CREATE_TIMEOUT)
            launch.started()
            record.save(paths)
            if pid_file:
                write_pid_file(pid_file, record.pid)
            undo.pop_all()
        if detach:
            launch.release()
        return launch, record

    def _stop_daemon(self, record: ContainerRecord) -> None:
        """Undo of a create: the daemon removes whatever it made, then exits."""
        with contextlib.suppress(KataError, OSError), self.client(record.id) as client:
            client.call("Delete", task.DeleteRequest(id=record.id), task.DeleteResponse, timeout=DELETE_TIMEOUT)
        self._shutdown(record)

    def _shutdown(self, record: ContainerRecord) -> None:
        from kata.oci_cli.daemon import wait_gone

        with contextlib.suppress(KataError, OSError), self.client(record.id) as client:
            client.call("Shutdown", task.ShutdownRequest(id=record.id), Empty, timeout=DELETE_TIMEOUT)
        if not wait_gone(record.daemon_pid, record.daemon_start, DAEMON_EXIT_TIMEOUT):
            with contextlib.suppress(OSError):
                os.kill(record.daemon_pid, signal.SIGTERM)
            wait_gone(record.daemon_pid, record.daemon_start, DAEMON_EXIT_TIMEOUT)

    def start(self, container_id: str) -> None:
        """Start init; returns once it runs.

        Raises:
            OciCliError: it is not in the created state.
        """
        status = self.state(container_id).status
        if status == "stopped":
            raise OciCliError("cannot start a container that has stopped")
        if status != "created":
            raise OciCliError(f"cannot start an already {status} container")
        self.call(container_id, "Start", task.StartRequest(id=container_id), task.StartResponse)

    # state, list

    def state(self, container_id: str) -> ContainerState:
        """The container's status (stopped when its daemon is gone) and its init proxy's pid.

        Raises:
            ContainerNotFoundError: no such container.
        """
        record = self.record(container_id)
        try:
            response = self.call(container_id, "State", task.StateRequest(id=container_id), task.StateResponse,
                                 timeout=10.0)
            status = _STATUS_NAMES.get(response.status, "unknown")
        except (OciCliError, ConnectionClosedError):
            status = "stopped"
        except NotFoundError:
            raise ContainerNotFoundError(container_id) from None
        return ContainerState(record, status, record.pid)

    def list_states(self) -> list[dict[str, object]]:
        """State JSON of every container (runc list's JSON), with owner."""
        found = []
        for container_id in container_ids(self.root):
            with contextlib.suppress(ContainerNotFoundError):
                state = self.state(container_id).to_json()
                state["owner"] = owner_of(str(self.paths(container_id).directory))
                found.append(state)
        return found

    # signals, pause/resume, delete

    def kill(self, container_id: str, signum: int, *, all_processes: bool = False) -> None:
        """Signal init (every process with ``all_processes``).

        Raises:
            OciCliError: the container is not running.
        """
        try:
            self.call(container_id, "Kill", task.KillRequest(id=container_id, signal=signum, all=all_processes),
                      Empty)
        except (NotFoundError, ConnectionClosedError):
            raise OciCliError("container not running") from None

    def pause(self, container_id: str) -> None:
        """Freeze the container's processes."""
        self._require(container_id, "running", "container not running")
        self.call(container_id, "Pause", task.PauseRequest(id=container_id), Empty)

    def resume(self, container_id: str) -> None:
        """Thaw them."""
        self._require(container_id, "paused", "container not paused")
        self.call(container_id, "Resume", task.ResumeRequest(id=container_id), Empty)

    def _require(self, container_id: str, status: str, message: str) -> None:
        if self.state(container_id).status != status:
            raise OciCliError(message)

    def delete(self, container_id: str, *, force: bool = False) -> None:
        """Remove the container, its sandbox and daemon. A running or paused one needs ``force`` (it is
        killed); a created one is killed as runc does. ``force`` on a missing container is no error.

        Raises:
            ContainerNotFoundError: no such container (without ``force``).
            OciCliError: it is running and ``force`` was not given.
        """
        paths = self.paths(container_id)
        try:
            state = self.state(container_id)
        except ContainerNotFoundError:
            if paths.directory.exists():  # a create that never finished
                self._remove(paths)
                return
            if force:
                return
            raise
        if state.status in ("running", "paused") and not force:
            raise OciCliError(f"cannot delete container {container_id} that is not stopped: {state.status}")
        if state.status != "stopped":
            self._kill_and_wait(container_id, paused=state.status == "paused")
        try:
            self.call(container_id, "Delete", task.DeleteRequest(id=container_id), task.DeleteResponse,
                      timeout=DELETE_TIMEOUT)
        except (OciCliError, ConnectionClosedError, NotFoundError):
            self._clean_up_after_daemon(state.record)
        self._shutdown(state.record)
        self._remove(paths)

    def _remove(self, paths: ContainerPaths) -> None:
        shutil.rmtree(paths.directory, ignore_errors=True)
        with contextlib.suppress(OSError):  # the last one takes <root>/.oci with it
            paths.directory.parent.rmdir()

    def _kill_and_wait(self, container_id: str, *, paused: bool) -> None:
        with contextlib.suppress(KataError):
            self.call(container_id, "Kill", task.KillRequest(id=container_id, signal=signal.SIGKILL, all=True), Empty)
            if paused:
                self.call(container_id, "Resume", task.ResumeRequest(id=container_id), Empty)
            self.call(container_id, "Wait", task.WaitRequest(id=container_id), task.WaitResponse, timeout=KILL_WAIT)

    def _clean_up_after_daemon(self, record: ContainerRecord) -> None:
        """The daemon is gone (killed, crashed): stop its VM and remove the sandbox from its state."""
        import asyncio

        from kata.sandbox import AsyncSandbox, SandboxNotFoundError

        async def clean() -> None:
            with contextlib.suppress(SandboxNotFoundError):
                sandbox = await AsyncSandbox.load(record.id, root=record.sandbox_root or self.sandbox_root,
                                                  dial_timeout=1.0, connect=False)
                await sandbox.delete()
        with contextlib.suppress(KataError):
            asyncio.run(clean())

    # exec

    def exec(self, container_id: str, process: dict[str, Any], *, pid_file: str | None,
             console_socket: str | None, detach: bool) -> int:
        """Run another process in the container: forked proxy with ``detach`` (returns 0 once it runs),
        else this process relays until it exits (returns its exit status).

        Raises:
            OciCliError: the container is not running; bad terminal/console flags.
            RpcError: the daemon refused the process.
        """
        from kata.oci_cli.launch import ProcessLaunch, check_terminal, write_pid_file

        check_terminal(bool(process.get("terminal")), console_socket, detach)
        status = self.state(container_id).status
        if status != "running":
            raise OciCliError(f"cannot exec in a {status} container")
        paths = self.paths(container_id)
        exec_id = f"exec-{os.urandom(8).hex()}"
        launch = ProcessLaunch(paths.io_dir(exec_id), terminal=bool(process.get("terminal")),
                               console_socket=console_socket, detach=detach)
        with ExitStack() as undo:
            undo.callback(launch.abandon)
            stdin, stdout, stderr = launch.paths
            spec = any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
                               value=json.dumps(process).encode())
            self.call(container_id, "Exec", task.ExecProcessRequest(
                id=container_id, exec_id=exec_id, terminal=bool(process.get("terminal")), stdin=stdin, stdout=stdout,
                stderr=stderr, spec=spec), Empty)
            undo.callback(self._forget_exec, container_id, exec_id)
            pid = launch.fork(str(paths.socket), container_id, exec_id) if detach else os.getpid()
            self.call(container_id, "Start", task.StartRequest(id=container_id, exec_id=exec_id), task.StartResponse)
            launch.started()
            if pid_file:
                write_pid_file(pid_file, pid)
            undo.pop_all()
        if detach:
            launch.release()
            return 0
        return launch.run_here(str(paths.socket), container_id, exec_id)

    def _forget_exec(self, container_id: str, exec_id: str) -> None:
        with contextlib.suppress(KataError):
            self.call(container_id, "Delete", task.DeleteRequest(id=container_id, exec_id=exec_id),
                      task.DeleteResponse)

    # ps, stats, update

    def pids(self, container_id: str) -> list[int]:
        """Host pids of the container (the VMM's: its processes live in the guest)."""
        response = self.call(container_id, "Pids", task.PidsRequest(id=container_id), task.PidsResponse)
        return [p.pid for p in response.processes]

    def stats(self, container_id: str) -> any_pb2.Any:
        """The container's cgroup metrics (io.containerd.cgroups.v1.Metrics in an Any)."""
        try:
            return self.call(container_id, "Stats", task.StatsRequest(id=container_id), task.StatsResponse).stats
        except FailedPreconditionError as exc:
            raise OciCliError(f"container not running: {exc}") from exc

    def update(self, container_id: str, resources: dict[str, Any]) -> None:
        """Apply new cgroup limits (an OCI LinuxResources)."""
        message = any_pb2.Any(type_url=LINUX_RESOURCES_URL, value=json.dumps(resources).encode())
        self.call(container_id, "Update", task.UpdateTaskRequest(id=container_id, resources=message), Empty)


def _make_directory(paths: ContainerPaths) -> None:
    for attempt in range(3):  # another container's delete may remove <root>/.oci meanwhile
        paths.directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            paths.directory.mkdir(mode=0o700)
            return
        except FileExistsError:
            raise OciCliError(f"container with id exists: {paths.container_id}") from None
        except FileNotFoundError:
            if attempt == 2:
                raise


def _read_spec(bundle: str) -> dict[str, Any]:
    return load_object(os.path.join(bundle, "config.json"), what=f"bundle {bundle}:")


def _rootfs(bundle: str, spec: dict[str, Any]) -> str:
    root = spec.get("root") or {}
    path = root.get("path", "rootfs") if isinstance(root, dict) else "rootfs"
    return os.path.join(bundle, str(path))


def _annotations(spec: dict[str, Any]) -> dict[str, str]:
    found = spec.get("annotations") or {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}

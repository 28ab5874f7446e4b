"""ContainerRuntime: the typed API the agent's RPC handlers call, one method per container verb."""

from __future__ import annotations

import os
import re
import threading
import time

from kata.errors import KataError, OciError
from kata.guest.log import GuestLog
from kata.guest.runtime.cgroups import Cgroup, cgroup_path
from kata.guest.runtime.container import Container, ContainerInfo, ProcessInfo
from kata.guest.runtime.errors import (
    CgroupError,
    ContainerExistsError,
    ContainerNotFoundError,
    RuntimeClosedError,
)
from kata.guest.runtime.launch import launch_exec, launch_init
from kata.guest.runtime.oom import OomMonitor
from kata.guest.runtime.plan import plan_container, plan_process
from kata.guest.runtime.state import ContainerState, require

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kata.guest.runtime.plan import ContainerPlan
    from kata.guest.runtime.process import ContainerProcess
    from kata.guest.runtime.stats import ContainerStats
    from kata.guest.runtime.watch import ChildWatcher
    from kata.oci import Process, Resources, Spec

__all__ = ["DEFAULT_CGROUP_ROOT", "ContainerRuntime"]

DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"
# runc's rule for container ids; they become cgroup directory names.
_ID = re.compile(r"[A-Za-z0-9_+.-]+")


def _occupy_stdio() -> None:
    """Open /dev/null on whichever of fds 0-2 is closed.

    A child's pipe must never get one of those numbers: the forked process dup2()s its stdio there.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open("/dev/null", os.O_RDWR)  # the lowest free number: this one


class ContainerRuntime:
    """Creates and drives containers inside the guest (host mode: in throwaway namespaces).

    ``watcher`` reports the exits of the children the runtime forks (the Reaper in the guest);
    ``cgroup_root`` is a cgroup v2 mount (or a directory in one) that gets one cgroup per container,
    None for no cgroups; ``no_pivot`` uses MS_MOVE + chroot instead of pivot_root.
    """

    def __init__(self, watcher: ChildWatcher, *, cgroup_root: str | None = DEFAULT_CGROUP_ROOT,
                 log: GuestLog | None = None, no_pivot: bool = False, oom_interval: float = 1.0) -> None:
        _occupy_stdio()
        self.watcher = watcher
        self.cgroup_root = cgroup_root
        self.log = log or GuestLog()
        self.no_pivot = no_pivot
        self._oom = OomMonitor(oom_interval)
        self._containers: dict[str, Container] = {}
        self._busy: set[str] = set()  # ids being created or removed
        self._lock = threading.Lock()
        self._closed = False

    def _get(self, container_id: str) -> Container:
        container = self._containers.get(container_id)
        if container is None:
            raise ContainerNotFoundError(container_id)
        return container

    def _process(self, container_id: str, exec_id: str) -> ContainerProcess:
        return self._get(container_id).process(exec_id)

    def create_container(self, container_id: str, spec: Spec, *,
                         sandbox_netns: str | None = None) -> ContainerInfo:
        """Set the container up (namespaces, cgroup, rootfs, identity); init waits for start.

        Raises:
            OciError: naming the field of a malformed or unsupported spec (PathEscapeError,
                UnsupportedError), or an invalid container id.
            ContainerExistsError: when the id is in use.
            CgroupError: when the cgroup cannot be made or a limit is refused.
            SetupError: naming the step that failed in the child (nothing is left behind).
            RuntimeClosedError: after close().
        """
        if not _ID.fullmatch(container_id) or container_id in (".", ".."):
            raise OciError(f"container id {container_id!r}: must match {_ID.pattern}, not . or ..")
        started = time.monotonic()
        plan = plan_container(container_id, spec, sandbox_netns=sandbox_netns)
        self._note_ignored(container_id, spec)
        self._claim(container_id)
        planned = time.monotonic()
        try:
            container = self._launch(plan, spec)
            with self._lock:
                self._containers[container_id] = container
        finally:
            with self._lock:
                self._busy.discard(container_id)
        self.log.info("container created", container=container_id, pid=container.init.pid,
                      plan_ms=round((planned - started) * 1000, 1),
                      launch_ms=round((time.monotonic() - planned) * 1000, 1))
        return container.info()

    def _note_ignored(self, container_id: str, spec: Spec) -> None:
        """Say which spec fields the guest leaves to others or cannot honour (see docs/guest-runtime.md)."""
        ignored = []
        if spec.hooks is not None and any(vars(spec.hooks).values()):
            ignored.append("hooks (run by the host runtime)")
        if spec.process is not None and (spec.process.apparmor_profile or spec.process.selinux_label):
            ignored.append("process.apparmorProfile/selinuxLabel (no LSM in the guest)")
        linux = spec.linux
        if linux is not None and linux.resources is not None and linux.resources.devices:
            ignored.append("linux.resources.devices (no device cgroup in the guest)")
        if linux is not None and (linux.intel_rdt is not None or linux.mount_label):
            ignored.append("linux.intelRdt/mountLabel")
        if ignored:
            self.log.debug("spec fields ignored in the guest", container=container_id, fields=", ".join(ignored))

    def _claim(self, container_id: str) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeClosedError("create container: the runtime is closed")
            if container_id in self._containers or container_id in self._busy:
                raise ContainerExistsError(container_id)
            self._busy.add(container_id)

    def _launch(self, plan: ContainerPlan, spec: Spec) -> Container:
        linux = spec.linux
        cgroup = None
        if self.cgroup_root is not None:
            path = cgroup_path(self.cgroup_root, plan.container_id, linux.cgroups_path if linux else "")
            cgroup = Cgroup.create(self.cgroup_root, path)
        try:
            if cgroup is not None and linux is not None and linux.resources is not None:
                cgroup.apply(linux.resources)
            launch = launch_init(plan, self.watcher, cgroup_procs=cgroup.procs_file if cgroup else None,
                                 no_pivot=self.no_pivot)
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise
        if cgroup is not None:
            self._oom.watch(plan.container_id, f"{cgroup.path}/memory.events")
        return Container(plan, cgroup, launch)

    def start_container(self, container_id: str) -> None:
        """Let the container's init execve its process.

        Raises:
            ContainerNotFoundError: for an unknown id.
            StateError: unless the container is CREATED.
            ExecError: when execve failed; the container is STOPPED with exit status 127 or 126.
        """
        self._get(container_id).start()
        self.log.info("container started", container=container_id)

    def exec_process(self, container_id: str, exec_id: str, process: Process) -> int:
        """Run ``process`` in the container's namespaces and cgroup; returns its pid.

        Raises:
            ContainerNotFoundError: for an unknown container.
            OciError: naming the field of a malformed process.
            StateError: unless the container is CREATED or RUNNING.
            ProcessExistsError: when ``exec_id`` is in use.
            ExecError: when execve failed; the process is kept (exit status 127 or 126) for wait.
            SetupError: when joining the container failed.
        """
        container = self._get(container_id)
        plan = plan_process(process)
        container.reserve_exec(exec_id)
        launched: ContainerProcess | None = None
        try:
            launched, failure = launch_exec(
                exec_id, plan, container.plan.seccomp, init_pid=container.init.pid, watcher=self.watcher,
                cgroup_procs=container.cgroup.procs_file if container.cgroup else None)
        finally:
            container.finish_exec(exec_id, launched)
        if failure is not None:
            raise failure
        self.log.info("process started", container=container_id, exec_id=exec_id, pid=launched.pid)
        return launched.pid

    def signal_process(self, container_id: str, exec_id: str, signal: int) -> None:
        """Send ``signal`` to one process; ``exec_id`` "" means init and every other process.

        Signalling a process that has exited does nothing.

        Raises:
            ContainerNotFoundError, ProcessNotFoundError: for unknown ids.
        """
        self._get(container_id).signal(exec_id, signal)

    def wait_process(self, container_id: str, exec_id: str, timeout: float | None = None) -> int:
        """Block until the process exits; its exit status (128+signal when killed).

        An exec'd process is forgotten once waited for and its stdout and stderr read to EOF.

        Raises:
            ContainerNotFoundError, ProcessNotFoundError: for unknown ids.
            TimeoutError: when ``timeout`` seconds pass first.
        """
        container = self._get(container_id)
        process = container.process(exec_id)
        status = process.latch.wait(timeout)
        if status is None:
            raise TimeoutError(f"wait process {exec_id!r} of container {container_id}: still running")
        if process is container.init:
            self._oom.check()
        process.waited = True
        container.release_if_done(process)
        return status

    def read_stdout(self, container_id: str, exec_id: str, size: int) -> bytes:
        """Up to ``size`` bytes of the process's output (blocking); b"" exactly at EOF.

        Raises:
            ContainerNotFoundError, ProcessNotFoundError: for unknown ids.
        """
        container = self._get(container_id)
        process = container.process(exec_id)
        data = process.stdio.read_stdout(size)
        if not data:
            container.release_if_done(process)
        return data

    def read_stderr(self, container_id: str, exec_id: str, size: int) -> bytes:
        """Up to ``size`` bytes of standard error (b"" at EOF, at once for a terminal).

        Raises:
            ContainerNotFoundError, ProcessNotFoundError: for unknown ids.
        """
        container = self._get(container_id)
        process = container.process(exec_id)
        data = process.stdio.read_stderr(size)
        if not data:
            container.release_if_done(process)
        return data

    def write_stdin(self, container_id: str, exec_id: str, data: bytes) -> int:
        """Write all of ``data`` to the process's stdin; returns its length.

        Raises:
            ContainerNotFoundError, ProcessNotFoundError: for unknown ids.
            StateError: after close_stdin.
            BrokenPipeError: when the process no longer reads its stdin.
        """
        return self._process(container_id, exec_id).stdio.write_stdin(data)

    def close_stdin(self, container_id: str, exec_id: str) -> None:
        """Give the process EOF on stdin (^D for a terminal).

        Raises:
            ContainerNotFoundError, ProcessNotFoundError: for unknown ids.
        """
        self._process(container_id, exec_id).stdio.close_stdin()

    def resize_tty(self, container_id: str, exec_id: str, rows: int, columns: int) -> None:
        """Set the window size of the process's terminal.

        Raises:
            ContainerNotFoundError, ProcessNotFoundError: for unknown ids.
            TerminalError: when the process has no terminal.
        """
        self._process(container_id, exec_id).stdio.resize(rows, columns)

    def remove_container(self, container_id: str, timeout: float = 0) -> None:
        """SIGKILL whatever runs, wait (``timeout`` seconds, 0: no limit), remove the cgroup and forget it.

        Raises:
            ContainerNotFoundError: for an unknown id.
            RemoveTimeoutError: when processes outlive the timeout (the container stays).
            CgroupError: when the cgroup cannot be removed.
        """
        with self._lock:
            container = self._get(container_id)
            if container_id in self._busy:
                raise ContainerExistsError(container_id)
            self._busy.add(container_id)
        try:
            container.destroy(timeout)
            self._oom.unwatch(container_id)
            with self._lock:
                del self._containers[container_id]
        finally:
            with self._lock:
                self._busy.discard(container_id)
        self.log.info("container removed", container=container_id)

    def pause_container(self, container_id: str) -> None:
        """Freeze every process of the container.

        Raises:
            ContainerNotFoundError: for an unknown id.
            StateError: unless RUNNING.
            CgroupError: without a cgroup, or when it does not freeze.
        """
        self._get(container_id).pause()

    def resume_container(self, container_id: str) -> None:
        """Thaw a paused container.

        Raises:
            ContainerNotFoundError: for an unknown id.
            StateError: unless PAUSED.
            CgroupError: when the cgroup cannot be thawed.
        """
        self._get(container_id).resume()

    def stats_container(self, container_id: str) -> ContainerStats:
        """cgroup statistics (None without a cgroup) and the network counters of its namespace.

        Raises:
            ContainerNotFoundError: for an unknown id.
            CgroupError: when a cgroup file cannot be read.
        """
        from kata.guest.runtime.stats import ContainerStats, parse_net_dev  # loaded on first use

        container = self._get(container_id)
        cgroup = container.cgroup.stats() if container.cgroup else None
        try:
            with open(f"/proc/{container.init.pid}/net/dev") as fh:
                network = parse_net_dev(fh.read())
        except OSError:
            network = ()
        return ContainerStats(cgroup=cgroup, network=network)

    def update_container(self, container_id: str, resources: Resources) -> None:
        """Apply new cgroup limits.

        Raises:
            ContainerNotFoundError: for an unknown id.
            StateError: when the container is STOPPED.
            CgroupError: without a cgroup, or when a limit is refused.
            OciError: for limits that cannot be expressed.
        """
        container = self._get(container_id)
        require(f"update container {container_id}", container.state, ContainerState.CREATED,
                ContainerState.RUNNING, ContainerState.PAUSED)
        if container.cgroup is None:
            raise CgroupError(f"update container {container_id}: the container has no cgroup")
        container.cgroup.apply(resources)

    def pids(self, container_id: str) -> tuple[int, ...]:
        """The pids (as the agent sees them) of every process in the container.

        Raises:
            ContainerNotFoundError: for an unknown id.
        """
        return self._get(container_id).pids()

    def next_oom_event(self, timeout: float | None = None) -> str:
        """Block until a container has a process OOM-killed; returns its id.

        Raises:
            TimeoutError: when ``timeout`` seconds pass first.
            RuntimeClosedError: when the runtime is closed meanwhile.
        """
        return self._oom.next_event(timeout)

    def container_info(self, container_id: str) -> ContainerInfo:
        """State, init pid and exit status of one container.

        Raises:
            ContainerNotFoundError: for an unknown id.
        """
        return self._get(container_id).info()

    def process_info(self, container_id: str, exec_id: str) -> ProcessInfo:
        """State, pid and exit status of one process ("" for init).

        Raises:
            ContainerNotFoundError, ProcessNotFoundError: for unknown ids.
        """
        process = self._process(container_id, exec_id)
        return ProcessInfo(exec_id=process.exec_id, pid=process.pid, state=process.state,
                           exit_status=process.exit_status, terminal=process.stdio.terminal)

    def container_ids(self) -> tuple[str, ...]:
        """Ids of every container, in creation order."""
        with self._lock:
            return tuple(self._containers)

    def close(self, timeout: float = 10.0) -> None:
        """Remove every container (SIGKILL) and stop the OOM monitor; later creates fail.

        Raises:
            RemoveTimeoutError, CgroupError: the first container that could not be removed (the
                others are still removed).
        """
        with self._lock:
            self._closed = True
        failure: BaseException | None = None
        for container_id in self.container_ids():
            try:
                self.remove_container(container_id, timeout)
            except KataError as exc:
                self.log.error("remove container failed", container=container_id, error=str(exc))
                failure = failure or exc
        self._oom.close()
        if failure is not None:
            raise failure


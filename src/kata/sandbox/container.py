"""AsyncContainer: a container in a sandbox, from its OCI bundle to RemoveContainer and unsharing."""

from __future__ import annotations

import contextlib
import logging
import os
import signal as signals
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from kata.errors import KataError, OciError
from kata.log import fields
from kata.oci import Bundle, Process, Resources, Spec, load_bundle
from kata.sandbox.errors import SandboxError
from kata.sandbox.guestspec import GuestContainer, guest_container
from kata.sandbox.mounts import bind, make_mountpoint, remove_tree, source_kinds, unmount
from kata.sandbox.paths import check_id
from kata.sandbox.persist import write_json
from kata.sandbox.process import AsyncExec, ProcessCore
from kata.sandbox.records import ContainerRecord
from kata.sandbox.relay import ProcessIo
from kata.sandbox.requests import container_request, exec_request
from kata.sandbox.states import CONTAINER_TRANSITIONS, CONTAINER_VERBS, ContainerState, Lifecycle
from kata.sandbox.stats import ContainerStats, stats_from_agent
from kata.sandbox.stdio import StdinTarget, StdoutTarget, open_stdio
from kata.sandbox.timeline import CONTAINER_CREATED, CONTAINER_STARTED
from kata.ttrpc.status import NotFoundError

if TYPE_CHECKING:
    from kata.sandbox.sandbox import AsyncSandbox

__all__ = ["AsyncContainer"]

_log = logging.getLogger("kata.sandbox")
REMOVE_TIMEOUT = 10  # seconds the agent may take to kill and reap a container's processes
_C = ContainerState


def _bundle(source: str | os.PathLike[str] | Bundle) -> Bundle:
    bundle = source if isinstance(source, Bundle) else load_bundle(source)
    if not os.path.isdir(bundle.rootfs):
        raise OciError(f"bundle {bundle.path}: root.path {bundle.rootfs} is not a directory")
    return bundle


class AsyncContainer:
    """One container. Lifecycle (guarded; a wrong call raises :class:`kata.errors.StateError`)::

        creating -> created --start--> running <--pause/resume--> paused
        created/running/paused --(init exits, seen by wait)--> stopped
        created/stopped --delete--> deleted      (delete(force=True) from any state)

    ``stdin``/``stdout``/``stderr`` are the host ends of the init process's PIPE streams.
    """

    def __init__(self, sandbox: AsyncSandbox, record: ContainerRecord, *, io: ProcessIo | None = None,
                 spec: Spec | None = None) -> None:
        self.sandbox = sandbox
        self.record = record
        self.spec = spec
        self._life: Lifecycle[ContainerState] = Lifecycle(
            f"container {record.container_id[:12]}", _C(record.state), CONTAINER_VERBS, CONTAINER_TRANSITIONS)
        self._init = ProcessCore(self, record.container_id, io)
        self._init.exit_status = record.exit_status
        self._execs: dict[str, ProcessCore] = {}
        stdio = io.stdio if io is not None else None
        self.stdin: BinaryIO | None = stdio.stdin_pipe if stdio else None
        self.stdout: BinaryIO | None = stdio.stdout_pipe if stdio else None
        self.stderr: BinaryIO | None = stdio.stderr_pipe if stdio else None

    @property
    def id(self) -> str:
        """The container id."""
        return self.record.container_id

    @property
    def state(self) -> ContainerState:
        """The lifecycle state."""
        return self._life.state

    @property
    def exit_status(self) -> int | None:
        """The init process's exit status once waited for."""
        return self._init.exit_status

    def _fields(self, **extra: object) -> dict[str, dict[str, object]]:
        return fields(sandbox=self.sandbox.sandbox_id, container=self.id, **extra)

    def _move(self, state: ContainerState) -> None:
        self._life.move(state)
        self._persist()

    def _persist(self) -> None:
        if self.state is _C.DELETED:
            return
        self.record = replace(self.record, state=self.state.value, exit_status=self._init.exit_status)
        write_json(self.sandbox.paths.container_state(self.id), self.record.to_json())

    # creation

    @classmethod
    async def create(cls, sandbox: AsyncSandbox, source: str | os.PathLike[str] | Bundle, *,
                     container_id: str | None = None, stdin: StdinTarget = None, stdout: StdoutTarget = None,
                     stderr: StdoutTarget = None) -> AsyncContainer:
        """Share the bundle's rootfs and bind mounts into the guest, CreateContainer, start the relays.

        Raises:
            StateError: the sandbox is not running.
            OciError: the bundle or its config.json is bad (before anything is acquired).
            SandboxError: the id is bad or in use, or a host mount failed.
            SandboxLostError, RpcError: the agent refused or went away (everything acquired is undone).
        """
        agent = sandbox.agent_for("create container")
        cid = check_id("container", container_id or uuid.uuid4().hex)
        bundle = _bundle(source)
        plan = guest_container(bundle.spec, cid, bundle.rootfs, sources=source_kinds(bundle.spec.mounts),
                               layout=sandbox.layout, keep_seccomp=sandbox.keep_seccomp)
        paths = sandbox.paths
        if cid in sandbox.containers or paths.container_dir(cid).exists():
            raise SandboxError(f"container {cid} already exists in sandbox {sandbox.sandbox_id}",
                               sandbox_id=sandbox.sandbox_id)
        terminal = bool(plan.spec.process and plan.spec.process.terminal)
        async with AsyncExitStack() as stack:
            _make_dir(stack, paths.containers, paths.container_dir(cid))
            shares = _share(stack, paths.container_share(cid), plan)
            stdio = open_stdio(stdin, stdout, stderr)
            stack.callback(stdio.close)
            await sandbox.call(agent.create_container(container_request(cid, plan.spec)))
            stack.push_async_callback(_remove_quietly, sandbox, cid)
            io = ProcessIo(agent, cid, cid, stdio, terminal=terminal, sandbox_id=sandbox.sandbox_id)
            record = ContainerRecord(container_id=cid, sandbox_id=sandbox.sandbox_id, bundle=bundle.path,
                                     rootfs=bundle.rootfs, state=_C.CREATING.value, created=time.time(),
                                     terminal=terminal, shares=shares,
                                     annotations=dict(bundle.spec.annotations))
            container = cls(sandbox, record, io=io, spec=bundle.spec)
            io.start()
            stack.push_async_callback(io.cancel)
            container._move(_C.CREATED)
            sandbox.phase(CONTAINER_CREATED, cid)
            stack.pop_all()
        _log.info("container created", extra=container._fields(bundle=bundle.path))
        return container

    # the init process

    async def start(self) -> None:
        """Start the init process.

        Raises:
            StateError: the container is not created, or the sandbox is not running.
            SandboxLostError, RpcError: the agent failed or went away.
        """
        self._life.require("start")
        agent = self.sandbox.agent_for("call the agent")
        await self.sandbox.call(agent.start_container(self.id))
        if self.state is _C.CREATED:  # else a fast init (`true`) already exited and a waiter moved it to stopped
            self._move(_C.RUNNING)
        self.sandbox.phase(CONTAINER_STARTED, self.id)

    async def wait(self) -> int:
        """Wait for the init process to exit (its output drained); its exit status (128+signal if killed).

        Raises:
            StateError: the container is being created or is deleted, or the sandbox is not running.
            SandboxLostError: the VM or agent went away meanwhile.
            RpcError: the agent no longer knows the container.
        """
        self._life.require("wait")
        status = await self._init.wait()
        if self.state in (_C.CREATED, _C.RUNNING, _C.PAUSED):
            self._move(_C.STOPPED)
        return status

    async def kill(self, signal: int = signals.SIGTERM, *, all_processes: bool = False) -> None:
        """Send ``signal`` to the init process (or to every process of the container).

        Raises:
            StateError: the container is not created, running or paused, or the sandbox is not running.
            SandboxLostError, RpcError: the agent failed or went away.
        """
        self._life.require("kill")
        await self._init.kill(signal, "" if all_processes else None)

    async def resize(self, rows: int, columns: int) -> None:
        """Set the init process's terminal size.

        Raises:
            StateError: the container is not created or running.
            SandboxLostError, RpcError: no terminal, or the agent failed or went away.
        """
        self._life.require("resize")
        await self._init.resize(rows, columns)

    async def close_stdin(self) -> None:
        """Give the init process EOF on stdin.

        Raises:
            StateError: the container is not live.
            SandboxLostError, RpcError: the agent failed or went away.
        """
        self._life.require("close stdin")
        await self._init.close_stdin()

    # other processes

    def _exec_process(self, command: Sequence[str] | Process, terminal: bool, env: Sequence[str] | None,
                      cwd: str | None) -> Process:
        if isinstance(command, Process):
            return command
        if self.spec is None:  # loaded from state.json: the bundle has the init's env, cwd and user
            with contextlib.suppress(OciError):
                self.spec = load_bundle(self.record.bundle).spec
        base = self.spec.process if self.spec is not None else None
        if base is None:
            base = Process(cwd="/", env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",))
        return replace(base, args=tuple(command), terminal=terminal, console_size=None,
                       env=tuple(env) if env is not None else base.env, cwd=cwd or base.cwd)

    async def exec(self, command: Sequence[str] | Process, *, exec_id: str | None = None, terminal: bool = False,
                   env: Sequence[str] | None = None, cwd: str | None = None, stdin: StdinTarget = None,
                   stdout: StdoutTarget = None, stderr: StdoutTarget = None) -> AsyncExec:
        """Run another process in the container: argv (with the init's env, cwd and user) or an OCI Process.

        Raises:
            StateError: the container is not running.
            SandboxError: the exec id is bad or in use (an exec's id is free again once it was waited
                for), or stdio cannot be set up.
            SandboxLostError, RpcError: the agent refused or went away.
        """
        self._life.require("exec")
        agent = self.sandbox.agent_for("call the agent")
        eid = check_id("exec", exec_id or uuid.uuid4().hex[:16])
        if eid in self._execs or eid == self.id:
            raise SandboxError(f"exec id {eid} is in use in container {self.id}", sandbox_id=self.sandbox.sandbox_id)
        process = self._exec_process(command, terminal, env, cwd)
        stdio = open_stdio(stdin, stdout, stderr)
        try:
            await self.sandbox.call(agent.exec_process(exec_request(self.id, eid, process)))
        except BaseException:
            stdio.close()
            raise
        io = ProcessIo(agent, self.id, eid, stdio, terminal=process.terminal, sandbox_id=self.sandbox.sandbox_id)
        io.start()
        core = self._execs[eid] = ProcessCore(self, eid, io, on_exit=self._forget_exec)
        return AsyncExec(core)

    def _forget_exec(self, core: ProcessCore) -> None:
        """A waited-for exec is gone from the agent too: its id may be used again."""
        if self._execs.get(core.exec_id) is core:
            del self._execs[core.exec_id]

    # whole-container verbs

    async def pause(self) -> None:
        """Freeze the container's processes (cgroup freezer in the guest).

        Raises:
            StateError: the container is not running.
            SandboxLostError, RpcError: the agent failed or went away.
        """
        self._life.require("pause")
        agent = self.sandbox.agent_for("call the agent")
        await self.sandbox.call(agent.pause_container(self.id))
        self._move(_C.PAUSED)

    async def resume(self) -> None:
        """Thaw a paused container.

        Raises:
            StateError: the container is not paused.
            SandboxLostError, RpcError: the agent failed or went away.
        """
        self._life.require("resume")
        agent = self.sandbox.agent_for("call the agent")
        await self.sandbox.call(agent.resume_container(self.id))
        self._move(_C.RUNNING)

    async def update(self, resources: Resources) -> None:
        """Apply new cgroup limits (CPU, memory, pids, ...) to the container in the guest.

        Raises:
            StateError: the container is not created or running, or the sandbox is not running.
            OciError: a number does not fit its protobuf field.
            SandboxLostError, RpcError: the agent refused or went away.
        """
        self._life.require("update")
        agent = self.sandbox.agent_for("call the agent")
        await self.sandbox.call(agent.update_container(self.id, resources))

    async def stats(self) -> ContainerStats:
        """CPU, memory and pids of the container's cgroup.

        Raises:
            StateError: the container is not live.
            SandboxLostError, RpcError: the agent failed or went away.
        """
        self._life.require("stats")
        agent = self.sandbox.agent_for("call the agent")
        return stats_from_agent(await self.sandbox.call(agent.stats_container(self.id)))

    async def delete(self, *, force: bool = False) -> None:
        """RemoveContainer, stop the relays, unshare the rootfs and mounts, remove the state; forget it.

        ``force`` deletes a live container too (the agent kills its processes); with the sandbox lost
        only the host side is cleaned.

        Raises:
            StateError: the container is live (without ``force``), or already deleted.
            SandboxError: a host mount could not be removed.
            RpcError: the agent refused (without ``force``).
        """
        self._life.require("force delete" if force else "delete")
        if self.sandbox.agent_available():
            await self._remove_in_guest(force)
        for core in (self._init, *self._execs.values()):
            await core.release()
        paths = self.sandbox.paths
        remove_tree(paths.container_share(self.id))
        remove_tree(paths.container_dir(self.id))
        self._life.move(_C.DELETED)
        self.sandbox.forget(self.id)
        _log.info("container deleted", extra=self._fields())

    async def _remove_in_guest(self, force: bool) -> None:
        agent = self.sandbox.agent_for("call the agent")
        try:
            if self.state is _C.PAUSED:
                await self.sandbox.call(agent.resume_container(self.id))
            await self.sandbox.call(agent.remove_container(self.id, REMOVE_TIMEOUT))
        except NotFoundError:
            pass  # the agent has already forgotten it
        except KataError as exc:
            if not force:
                raise
            _log.warning("remove container in the guest: %s", exc, extra=self._fields())

    async def release(self) -> None:
        """Stop this object's relays and waiters, leaving the container as it is (sandbox detach)."""
        for core in (self._init, *self._execs.values()):
            await core.release()


def _make_dir(stack: AsyncExitStack, parent: Path, directory: Path) -> None:
    try:
        parent.mkdir(exist_ok=True)
        directory.mkdir()
    except OSError as exc:
        raise SandboxError(f"create {directory}: {exc.strerror}") from exc
    stack.callback(remove_tree, directory)


def _share(stack: AsyncExitStack, share_dir: Path, plan: GuestContainer) -> tuple[str, ...]:
    """Bind every host source into the container's share dir; each bind registers its unmount."""
    try:
        share_dir.mkdir()
    except OSError as exc:
        raise SandboxError(f"create {share_dir}: {exc.strerror}") from exc
    stack.callback(remove_tree, share_dir)
    targets = []
    for share in plan.shares:
        target = share_dir / share.target
        make_mountpoint(target, share.kind)
        bind(share.source, target, readonly=share.readonly)
        stack.callback(unmount, target)
        targets.append(str(target))
    return tuple(targets)


async def _remove_quietly(sandbox: AsyncSandbox, container_id: str) -> None:
    """Undo of CreateContainer: best effort (the VM may be what failed)."""
    with contextlib.suppress(KataError):
        if sandbox.agent_available():
            agent = sandbox.agent_for("call the agent")
            await sandbox.call(agent.remove_container(container_id, REMOVE_TIMEOUT))

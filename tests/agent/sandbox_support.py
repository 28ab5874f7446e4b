"""Test seam of the sandbox tests: a FakeHypervisor whose "VM" is the host-mode agent, and bundles."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kata.config import AgentConfig, Config, HypervisorConfig, RuntimeConfig
from kata.errors import HypervisorError
from kata.hypervisor import register_hypervisor
from kata.hypervisor.fake import FakeHypervisor
from kata.hypervisor.state import VmState
from kata.oci import spec_to_json
from kata.oci.model import Mount, Root
from kata.sandbox import GuestLayout
from tests.agent.support import make_rootfs, make_spec

__all__ = ["HOSTMODE", "HostModeSetup", "HostModeVm", "descendants", "hostmode_setup", "make_bundle", "reap"]

HOSTMODE = "hostmode"
AGENT_START_TIMEOUT = 20.0


class HostModeVm(FakeHypervisor):
    """FakeHypervisor (lifecycle, fail_next, events) whose start() runs the host-mode agent on the agent
    socket, in its own mount namespace, as a slave of ours (so binds into the shared dir reach it).

    ``agent=False`` starts no agent (an agent that never answers); ``fail`` maps verbs to the errors
    their next call raises (FakeHypervisor.fail_next). ``detach()`` forgets the process.
    """

    name = HOSTMODE

    def __init__(self, config: HypervisorConfig | None = None, workdir: Path = Path("/nonexistent"), *,
                 sandbox_id: str = "", accelerator: str | None = "tcg", guest_root: Path = Path("/nonexistent"),
                 agent: bool = True, cgroup_root: str | None = None,
                 fail: dict[str, BaseException] | None = None) -> None:
        super().__init__(config, workdir, sandbox_id=sandbox_id, accelerator=accelerator)
        for verb, exc in (fail or {}).items():
            self.fail_next(verb, exc)
        self.guest_root = guest_root
        self.run_agent = agent
        self.cgroup_root = cgroup_root
        self.process: subprocess.Popen[bytes] | None = None
        self.killed: list[int] = []
        self._watch: asyncio.Task[None] | None = None

    def _argv(self) -> list[str]:
        argv = ["unshare", "--mount", "--uts", "--ipc", "--propagation", "slave", sys.executable, "-m",
                "kata.guest.hostmode", "--socket", str(self.paths.agent_socket), "--root", str(self.guest_root),
                "--log-level", "debug"]
        return argv + (["--cgroup-root", self.cgroup_root] if self.cgroup_root else [])

    async def start(self, timeout: float = 30.0) -> None:
        await super().start(timeout)
        if not self.run_agent:
            return
        with open(self.paths.console_log, "ab") as console:
            self.process = subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL, stdout=console, stderr=console,
                                            start_new_session=True)
        deadline = time.monotonic() + AGENT_START_TIMEOUT
        while not self.paths.agent_socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                await self.stop()
                raise HypervisorError(f"host-mode agent did not start: {self.paths.console_log.read_text()}")
            await asyncio.sleep(0.02)
        self._watch = asyncio.get_running_loop().create_task(self._watch_exit(self.process))

    async def _watch_exit(self, process: subprocess.Popen[bytes]) -> None:
        fd = os.pidfd_open(process.pid)
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, ended.set_result, None)
        try:
            await ended
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        status = process.wait()
        if self.state in (VmState.RUNNING, VmState.PAUSED):
            self._life.move(VmState.EXITED)
            self._end(status)

    def pids(self) -> tuple[int, ...]:
        if self.process is not None and self.process.poll() is None:
            return (self.process.pid,)
        return ()

    async def stop(self, timeout: float = 10.0) -> None:
        if self._watch is not None:
            self._watch.cancel()
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        reap(self.killed)  # orphans of the killed agent were reparented to us (the subreaper)
        await super().stop(timeout)

    async def detach(self) -> None:
        """Forget the agent process: it outlives us (another process stops it by pid)."""
        if self._watch is not None:
            self._watch.cancel()
        self.process = None

    def kill_vm(self) -> None:
        """SIGKILL the "VM": the agent and every process below it, as when QEMU dies."""
        assert self.process is not None
        self.killed = [*descendants(self.process.pid), self.process.pid]
        for pid in self.killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Processes below ``pid``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


@dataclass
class HostModeSetup:
    """A registered host-mode hypervisor: the config naming it, the guest layout, the state root."""

    config: Config
    layout: GuestLayout
    root: Path
    vms: list[HostModeVm] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def vm(self) -> HostModeVm:
        return self.vms[-1]


def hostmode_setup(tmp_path: Path, *, dial_timeout: int = 10, **options: Any) -> HostModeSetup:
    """Register the host-mode hypervisor for this test (``options`` go to HostModeVm)."""
    guest_root = tmp_path / "guest"
    config = Config(hypervisor_name=HOSTMODE, hypervisor=HypervisorConfig(accelerator="tcg"),
                    agent=AgentConfig(dial_timeout=dial_timeout), runtime=RuntimeConfig())
    setup = HostModeSetup(config, GuestLayout(str(guest_root), host_mode=True), tmp_path / "run", options=options)

    def factory(config: HypervisorConfig, workdir: Path, *, sandbox_id: str = "",
                accelerator: str | None = None) -> HostModeVm:
        vm = HostModeVm(config, workdir, sandbox_id=sandbox_id, accelerator=accelerator, guest_root=guest_root,
                        **setup.options)
        setup.vms.append(vm)
        return vm

    register_hypervisor(HOSTMODE, factory)
    return setup


def make_bundle(parent: Path, *args: str, mounts: Sequence[Mount] = (), terminal: bool = False,
                **process: Any) -> Path:
    """An OCI bundle dir: a busybox rootfs and a config.json running ``args`` (extra ``mounts`` appended)."""
    parent.mkdir(parents=True, exist_ok=True)
    spec = make_spec(make_rootfs(parent), *args, terminal=terminal, **process)
    spec = replace(spec, root=Root(path="rootfs"), mounts=(*spec.mounts, *mounts))
    (parent / "config.json").write_text(json.dumps(spec_to_json(spec)))
    return parent


def reap(pids: Sequence[int], timeout: float = 2.0) -> None:
    """Reap processes reparented to this (subreaper) test process once they have ended; a process whose
    parent is still dying is not ours yet, so it is retried until ``timeout``."""
    deadline = time.monotonic() + timeout
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    pending.discard(pid)
            except ChildProcessError:
                if not Path(f"/proc/{pid}").exists():
                    pending.discard(pid)
        if pending:
            time.sleep(0.01)

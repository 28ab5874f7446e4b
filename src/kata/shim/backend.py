"""What the Task service needs of a sandbox and its containers (kata.sandbox's async API has it);
a seam, so the service's bookkeeping can be tested without a VM."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import BinaryIO, Protocol

from kata.config import Config
from kata.oci import Bundle, Process, Resources
from kata.sandbox import ContainerStats
from kata.sandbox.stdio import StdinTarget, StdoutTarget

__all__ = ["ContainerHandle", "ExecHandle", "SandboxFactory", "SandboxHandle", "SandboxWatcher", "create_sandbox"]


class ExecHandle(Protocol):
    """A started exec (kata.sandbox.AsyncExec)."""

    stdin: BinaryIO | None

    async def wait(self) -> int:
        """Its exit status."""

    async def kill(self, signal: int) -> None:
        """Signal it."""

    async def resize(self, rows: int, columns: int) -> None:
        """Set its terminal size."""


class ContainerHandle(Protocol):
    """A container of the sandbox (kata.sandbox.AsyncContainer)."""

    stdin: BinaryIO | None

    async def start(self) -> None:
        """Start init."""

    async def wait(self) -> int:
        """Init's exit status."""

    async def kill(self, signal: int, *, all_processes: bool = False) -> None:
        """Signal init (or every process)."""

    async def resize(self, rows: int, columns: int) -> None:
        """Set init's terminal size."""

    async def exec(self, command: Process, *, exec_id: str | None = None, terminal: bool = False,
                   stdin: StdinTarget = None, stdout: StdoutTarget = None, stderr: StdoutTarget = None) -> ExecHandle:
        """Run another process in the container."""

    async def pause(self) -> None:
        """Freeze it."""

    async def resume(self) -> None:
        """Thaw it."""

    async def stats(self) -> ContainerStats:
        """Its resource usage."""

    async def update(self, resources: Resources) -> None:
        """Apply new cgroup limits."""

    async def delete(self, *, force: bool = False) -> None:
        """Remove it from the sandbox."""


class SandboxHandle(Protocol):
    """The sandbox this shim serves (kata.sandbox.AsyncSandbox)."""

    @property
    def sandbox_id(self) -> str:
        """Its id."""

    @property
    def pids(self) -> tuple[int, ...]:
        """Host pids of the VMM (first) and its helpers."""

    async def create_container(self, bundle: Bundle, *, container_id: str | None = None, stdin: StdinTarget = None,
                               stdout: StdoutTarget = None, stderr: StdoutTarget = None) -> ContainerHandle:
        """A created (not started) container."""

    def on_oom(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(container_id)`` on OOM kills; returns unsubscribe."""

    async def delete(self) -> None:
        """Stop the VM and remove everything."""


class SandboxWatcher(Protocol):
    """Told when the service's sandbox comes and goes (the shim-monitor socket is one)."""

    async def sandbox_started(self, sandbox: SandboxHandle) -> None:
        """The sandbox was made (before the first Create answers); must not raise."""

    async def sandbox_stopping(self, sandbox: SandboxHandle) -> None:
        """The sandbox is about to be deleted; must not raise."""


SandboxFactory = Callable[[Config, str, Bundle], Awaitable[SandboxHandle]]
"""Makes the sandbox (id) for the first container (bundle) with the configuration."""


def create_sandbox(root: str | os.PathLike[str] | None = None) -> SandboxFactory:
    """The real factory: AsyncSandbox.create under the state ``root`` (default: $KATA_ROOT or /run/kata), on
    the network namespace the first container's spec names (kata.network: wired to the VM)."""
    async def create(config: Config, sandbox_id: str, bundle: Bundle) -> SandboxHandle:
        from kata.network import spec_netns
        from kata.sandbox import AsyncSandbox
        return await AsyncSandbox.create(config, sandbox_id=sandbox_id, root=root, hostname=bundle.spec.hostname,
                                         netns=spec_netns(bundle.spec))
    return create

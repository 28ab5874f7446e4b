"""A process in a container (the init or an exec): its exit status, signals, terminal and stdio."""

from __future__ import annotations

import asyncio
import signal as signals
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

from kata.sandbox.relay import ProcessIo

if TYPE_CHECKING:
    from kata.sandbox.container import AsyncContainer

__all__ = ["DRAIN_TIMEOUT", "AsyncExec", "ProcessCore"]

# After a process exits, its output may still be in flight (or held open by its children): wait this
# long for the streams to end before cutting them.
DRAIN_TIMEOUT = 2.0


class ProcessCore:
    """What init and exec'd processes share: one WaitProcess for all waiters, then drained output."""

    def __init__(self, container: AsyncContainer, exec_id: str, io: ProcessIo | None, *,
                 on_exit: Callable[[ProcessCore], None] | None = None) -> None:
        self.container = container
        self.exec_id = exec_id
        self.io = io
        self.exit_status: int | None = None
        self._waiter: asyncio.Task[int] | None = None
        # Set for execs: once waited for, the agent forgets them; so does the container (ids are reusable).
        self._on_exit = on_exit

    async def _wait(self) -> int:
        sandbox = self.container.sandbox
        agent = sandbox.agent_for("call the agent")
        status = await sandbox.call(agent.wait_process(self.container.id, self.exec_id))
        if self.io is not None:
            await self.io.drain(DRAIN_TIMEOUT)
        self.exit_status = status
        if self._on_exit is not None:
            if self.io is not None:  # nothing reaches an exited exec's stdin: stop that relay too
                await self.io.cancel()
            self._on_exit(self)
        return status

    async def wait(self) -> int:
        """The exit status (128+signal when killed); every caller shares one WaitProcess.

        Raises:
            StateError: the sandbox is not running.
            SandboxLostError: the VM or agent went away meanwhile.
            RpcError: the agent does not know the process.
        """
        if self.exit_status is not None:
            return self.exit_status
        if self._waiter is None or (self._waiter.done() and self._waiter.exception() is not None):
            self._waiter = asyncio.get_running_loop().create_task(self._wait(), name=f"wait-{self.exec_id[:12]}")
        return await asyncio.shield(self._waiter)

    async def kill(self, signal: int, exec_id: str | None = None) -> None:
        """Send ``signal`` (to ``exec_id`` if given: "" is every process of the container).

        Raises:
            StateError: the sandbox is not running.
            SandboxLostError: the VM or agent went away.
            RpcError: the agent refused (unknown process).
        """
        sandbox = self.container.sandbox
        agent = sandbox.agent_for("call the agent")
        target = self.exec_id if exec_id is None else exec_id
        await sandbox.call(agent.signal_process(self.container.id, target, signal))

    async def resize(self, rows: int, columns: int) -> None:
        """Set the terminal's window size.

        Raises:
            StateError: the sandbox is not running.
            SandboxLostError: the VM or agent went away.
            RpcError: the process has no terminal or is unknown.
        """
        sandbox = self.container.sandbox
        agent = sandbox.agent_for("call the agent")
        await sandbox.call(agent.tty_win_resize(self.container.id, self.exec_id, rows, columns))

    async def close_stdin(self) -> None:
        """Give the process EOF on stdin.

        Raises:
            StateError: the sandbox is not running.
            SandboxLostError: the VM or agent went away.
            RpcError: the agent refused.
        """
        sandbox = self.container.sandbox
        agent = sandbox.agent_for("call the agent")
        await sandbox.call(agent.close_stdin(self.container.id, self.exec_id))

    async def release(self) -> None:
        """Stop the relays and waiters of this process (it is being deleted or handed over)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()
        if self.io is not None:
            await self.io.cancel()


class AsyncExec:
    """A process exec'd in a running container; ``stdin``/``stdout``/``stderr`` are the PIPE ends."""

    def __init__(self, core: ProcessCore) -> None:
        self._core = core
        stdio = core.io.stdio if core.io is not None else None
        self.stdin: BinaryIO | None = stdio.stdin_pipe if stdio else None
        self.stdout: BinaryIO | None = stdio.stdout_pipe if stdio else None
        self.stderr: BinaryIO | None = stdio.stderr_pipe if stdio else None

    @property
    def exec_id(self) -> str:
        """The exec id the agent knows the process by."""
        return self._core.exec_id

    @property
    def exit_status(self) -> int | None:
        """The exit status once waited for."""
        return self._core.exit_status

    async def wait(self) -> int:
        """See :meth:`ProcessCore.wait`."""
        return await self._core.wait()

    async def kill(self, signal: int = signals.SIGTERM) -> None:
        """See :meth:`ProcessCore.kill`."""
        await self._core.kill(signal)

    async def resize(self, rows: int, columns: int) -> None:
        """See :meth:`ProcessCore.resize`."""
        await self._core.resize(rows, columns)

    async def close_stdin(self) -> None:
        """See :meth:`ProcessCore.close_stdin`."""
        await self._core.close_stdin()

"""Stdio relays of one container process: a task per stream between the agent and the host side."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from kata.agent import AgentClient
from kata.errors import KataError
from kata.log import fields
from kata.sandbox.stdio import Sink, Source, Stdio

__all__ = ["ProcessIo", "relay_input", "relay_output"]

_log = logging.getLogger("kata.sandbox.relay")


async def relay_output(read: Callable[[], Awaitable[bytes]], sink: Sink) -> None:
    """Copy a stream to ``sink`` until its end, then close the sink: EOF reaches the reader exactly
    when the agent reports it (or when the stream breaks)."""
    try:
        while data := await read():
            await sink.write(data)
    finally:
        sink.close()


async def relay_input(source: Source, write: Callable[[bytes], Awaitable[int]],
                      close: Callable[[], Awaitable[None]]) -> None:
    """Copy ``source`` to the process's stdin; at the source's EOF close the process's stdin."""
    try:
        while data := await source.read():
            view = memoryview(data)
            while view:
                written = await write(bytes(view))
                if written <= 0:
                    raise OSError(f"stdin write took {written} bytes")
                view = view[written:]
        await close()
    finally:
        source.close()


class ProcessIo:
    """The relay tasks of one process (init or exec): stdout, stderr unless it has a terminal, stdin."""

    def __init__(self, agent: AgentClient, container_id: str, exec_id: str, stdio: Stdio, *,
                 terminal: bool, sandbox_id: str = "") -> None:
        self.agent = agent
        self.container_id = container_id
        self.exec_id = exec_id
        self.stdio = stdio
        self.terminal = terminal
        self._sandbox_id = sandbox_id
        self._outputs: list[asyncio.Task[None]] = []
        self._input: asyncio.Task[None] | None = None

    def _task(self, name: str, coro: Awaitable[None]) -> asyncio.Task[None]:
        async def run() -> None:
            try:
                await coro
            except KataError as exc:  # the agent or the VM went away: the stream simply ends
                _log.debug("%s relay ended: %s", name, exc, extra=self._fields())
            except OSError as exc:
                _log.warning("%s relay failed: %s", name, exc, extra=self._fields())
        label = f"{name}-{self.container_id[:12]}-{self.exec_id[:12]}"
        return asyncio.get_running_loop().create_task(run(), name=label)

    def _fields(self) -> dict[str, dict[str, object]]:
        return fields(sandbox=self._sandbox_id, container=self.container_id, exec_id=self.exec_id)

    def start(self) -> None:
        """Start the relays (stdout always: unread output would block the process)."""
        cid, eid, agent = self.container_id, self.exec_id, self.agent
        self._outputs.append(self._task("stdout", relay_output(lambda: agent.read_stdout(cid, eid),
                                                               self.stdio.stdout)))
        if not self.terminal:
            self._outputs.append(self._task("stderr", relay_output(lambda: agent.read_stderr(cid, eid),
                                                                   self.stdio.stderr)))
        else:
            self.stdio.stderr.close()  # a terminal has one output stream
        if self.stdio.stdin is not None:
            self._input = self._task("stdin", relay_input(
                self.stdio.stdin, lambda data: agent.write_stdin(cid, eid, data),
                lambda: agent.close_stdin(cid, eid)))
        elif not self.terminal:
            self._input = self._task("stdin", agent.close_stdin(cid, eid))

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the output streams to end; whether they did (else they are cut)."""
        if not self._outputs:
            return True
        _, pending = await asyncio.wait(self._outputs, timeout=timeout)
        if pending:
            _log.info("output still open %g s after exit: cut", timeout, extra=self._fields())
            await self.cancel()
        return not pending

    async def cancel(self) -> None:
        """Stop every relay now and close the host ends."""
        tasks = [t for t in (*self._outputs, self._input) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.stdio.close()

"""The one place VMM and helper processes are spawned: supervised children with bounded termination."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import deque
from collections.abc import Sequence

from kata.errors import HypervisorError
from kata.log import fields

__all__ = ["ChildProcess", "spawn"]

_log = logging.getLogger("kata.hypervisor.process")
_TAIL_LINES = 20


class ChildProcess:
    """A spawned child: its pid, exit status, the tail of its stderr, and escalating termination."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, sandbox_id: str) -> None:
        self.name = name
        self._proc = proc
        self._sandbox_id = sandbox_id
        self._stderr: deque[str] = deque(maxlen=_TAIL_LINES)
        self._reader = asyncio.get_running_loop().create_task(self._read_stderr(), name=f"{name}-stderr")

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once reaped (negative: killed by that signal), else None."""
        return self._proc.returncode

    def alive(self) -> bool:
        """Whether the child has not been reaped yet."""
        return self._proc.returncode is None

    def stderr_tail(self) -> str:
        """The last lines the child wrote to stderr."""
        return " | ".join(self._stderr)

    async def _read_stderr(self) -> None:
        stream = self._proc.stderr
        assert stream is not None
        while line := await stream.readline():
            text = line.decode("utf-8", "replace").rstrip()
            self._stderr.append(text)
            _log.debug("%s: %s", self.name, text, extra=fields(sandbox=self._sandbox_id, pid=self.pid))

    async def wait(self) -> int:
        """Wait for the child to end (and its stderr to drain); its exit status."""
        code = await self._proc.wait()
        await asyncio.shield(self._reader)  # a cancelled wait() must not cut the stderr tail short
        return code

    def send_signal(self, signum: int) -> None:
        """Signal the child (nothing if it is already gone)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signum)

    async def terminate(self, grace: float = 3.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` s; the exit status. Never raises for a gone child."""
        if self.alive():
            self.send_signal(signal.SIGTERM)
            try:
                return await asyncio.wait_for(self.wait(), grace)
            except TimeoutError:
                _log.warning("%s ignored SIGTERM for %g s: killing it", self.name, grace,
                             extra=fields(sandbox=self._sandbox_id, pid=self.pid))
                self.send_signal(signal.SIGKILL)
        return await self.wait()


async def spawn(argv: Sequence[str], *, name: str, pass_fds: Sequence[int] = (),
                sandbox_id: str = "") -> ChildProcess:
    """Start ``argv`` in its own session: stdin/stdout /dev/null, stderr captured, ``pass_fds`` inherited.

    Raises:
        HypervisorError: the program cannot be executed.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, pass_fds=tuple(pass_fds), start_new_session=True)
    except OSError as exc:
        raise HypervisorError(f"cannot run {name} ({argv[0]}): {os.strerror(exc.errno or 0)}") from exc
    _log.info("started %s", name, extra=fields(sandbox=sandbox_id, pid=proc.pid, argv=" ".join(argv)))
    return ChildProcess(name, proc, sandbox_id)

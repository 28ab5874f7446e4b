"""The host end of a task process's stdio: containerd's FIFOs, ``file://`` logs, ``binary://`` loggers."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import time
from typing import BinaryIO
from urllib.parse import parse_qsl, urlsplit

from kata.log import fields
from kata.sandbox import PIPE
from kata.sandbox.errors import SandboxError
from kata.sandbox.stdio import StdinTarget
from kata.shim.tasks import StdioPaths

__all__ = ["LOGGER_STOP_TIMEOUT", "STDIN_CLOSE_TIMEOUT", "ProcessStdio", "StdioError"]

_log = logging.getLogger("kata.shim.stdio")
CHUNK = 65536
STDIN_CLOSE_TIMEOUT = 5.0  # CloseIO waits this long for the stdin FIFO's data to be passed on
LOGGER_STOP_TIMEOUT = 12.0  # containerd gives a logging binary this long after SIGTERM


class StdioError(SandboxError):
    """A stdio path or URI cannot be opened (or a logging binary did not start)."""


def _open_fifo_writer(path: str) -> int:
    """Open a FIFO for writing without blocking: as a writer if someone reads it, else O_RDWR."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    os.set_blocking(fd, True)  # our own description: the sandbox's relay polls before it writes
    return fd


def _open_file(path: str) -> int:
    os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


async def _wait_fd(fd: int, *, writer: bool) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)
    (loop.add_writer if writer else loop.add_reader)(fd, wake)
    try:
        await ready
    finally:
        (loop.remove_writer if writer else loop.remove_reader)(fd)


async def _pump(source: int, target: int) -> None:
    """Copy ``source`` (a FIFO) to ``target`` (a pipe) until EOF; both are non-blocking."""
    while True:
        await _wait_fd(source, writer=False)
        try:
            data = os.read(source, CHUNK)
        except BlockingIOError:
            continue
        if not data:
            return
        view = memoryview(data)
        while view:
            await _wait_fd(target, writer=True)
            try:
                view = view[os.write(target, view):]
            except BlockingIOError:
                continue


class ProcessStdio:
    """Opens what containerd asked for and hands the sandbox library its targets (``stdin``,
    ``stdout``, ``stderr``); after the process exists, :meth:`attach` starts feeding its stdin."""

    def __init__(self, paths: StdioPaths, container_id: str) -> None:
        self.paths = paths
        self.container_id = container_id
        self.stdin: StdinTarget = None
        self.stdout: int | None = None
        self.stderr: int | None = None
        self._stdin_fifo: int | None = None
        self._stdin_pipe: BinaryIO | None = None
        self._pump: asyncio.Task[None] | None = None
        self._logger: int | None = None  # pid of a binary:// logger

    @classmethod
    async def open(cls, paths: StdioPaths, *, container_id: str, namespace: str) -> ProcessStdio:
        """Open the stdin FIFO, and the stdout/stderr FIFOs, file or logging binary.

        Raises:
            StdioError: a path cannot be opened, a URI scheme is unknown, or a logger failed to start.
        """
        stdio = cls(paths, container_id)
        try:
            await stdio._open(namespace)
        except OSError as exc:
            await stdio.close()
            raise StdioError(f"stdio of {container_id}: {exc}") from exc
        except BaseException:
            await stdio.close()
            raise
        return stdio

    async def _open(self, namespace: str) -> None:
        paths = self.paths
        if paths.stdin:
            self._stdin_fifo = os.open(paths.stdin, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            self.stdin = PIPE
        uri = urlsplit(paths.stdout) if paths.stdout else None
        if uri is None or uri.scheme in ("", "fifo"):
            self.stdout = _open_fifo_writer(uri.path) if uri is not None else None
            self.stderr = _open_fifo_writer(paths.stderr) if paths.stderr and not paths.terminal else None
        elif uri.scheme == "file":
            self.stdout = _open_file(uri.path)
            self.stderr = os.dup(self.stdout) if not paths.terminal else None
        elif uri.scheme == "binary":
            await self._start_logger(uri.path, parse_qsl(uri.query, keep_blank_values=True), namespace)
        else:
            raise StdioError(f"stdio of {self.container_id}: unknown stdout URI scheme {uri.scheme!r}")

    async def _start_logger(self, binary: str, query: list[tuple[str, str]], namespace: str) -> None:
        """containerd's binary logging: the logger gets stdout on fd 3, stderr on fd 4 and closes (or
        writes to) fd 5 when it is ready; its environment is only CONTAINER_ID and CONTAINER_NAMESPACE."""
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        self.stdout, self.stderr = out_w, err_w
        args = [item for key, value in query for item in ((key, value) if value else (key,))]
        env = {"CONTAINER_ID": self.container_id, "CONTAINER_NAMESPACE": namespace}
        try:
            self._logger = _spawn_logger([binary, *args], env, (out_r, err_r, ready_w))
        finally:
            for fd in (out_r, err_r, ready_w):
                os.close(fd)
        try:
            await asyncio.to_thread(os.read, ready_r, 1)
        finally:
            os.close(ready_r)

    def attach(self, stdin_pipe: BinaryIO | None) -> None:
        """The process exists: the library holds its own copies of stdout/stderr (close ours) and
        ``stdin_pipe`` is the write end of its stdin, fed from the FIFO until EOF."""
        for fd in (self.stdout, self.stderr):
            if fd is not None:
                os.close(fd)
        self.stdout = self.stderr = None
        if self._stdin_fifo is None or stdin_pipe is None:
            return
        self._stdin_pipe = stdin_pipe
        os.set_blocking(stdin_pipe.fileno(), False)
        self._pump = asyncio.get_running_loop().create_task(self._feed(self._stdin_fifo, stdin_pipe),
                                                            name=f"stdin-{self.container_id[:12]}")

    async def _feed(self, fifo: int, pipe: BinaryIO) -> None:
        try:
            await _pump(fifo, pipe.fileno())
        except OSError as exc:  # the process's stdin is gone (EPIPE): the rest is dropped
            _log.debug("stdin pump ended: %s", exc, extra=fields(container=self.container_id))
        finally:
            self._close_stdin_ends()

    def _close_stdin_ends(self) -> None:
        if self._stdin_pipe is not None:
            with contextlib.suppress(OSError):
                self._stdin_pipe.close()
            self._stdin_pipe = None
        if self._stdin_fifo is not None:
            os.close(self._stdin_fifo)
            self._stdin_fifo = None

    async def close_stdin(self, timeout: float = STDIN_CLOSE_TIMEOUT) -> None:
        """CloseIO: let the pump pass on what the client wrote before its FIFO closed (up to
        ``timeout`` s), then close the process's stdin (EOF)."""
        if self._pump is not None and not self._pump.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._pump), timeout)
            self._pump.cancel()
        self._close_stdin_ends()

    async def close(self) -> None:
        """Release every fd; stop a logging binary (SIGTERM, SIGKILL after LOGGER_STOP_TIMEOUT s)."""
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        self._close_stdin_ends()
        for fd in (self.stdout, self.stderr):
            if fd is not None:
                os.close(fd)
        self.stdout = self.stderr = None
        if self._logger is not None:
            logger, self._logger = self._logger, None
            await asyncio.to_thread(_stop_logger, logger)


def _spawn_logger(argv: list[str], env: dict[str, str], fds: tuple[int, int, int]) -> int:
    """Start the logger with ``fds`` on 3, 4, 5 and /dev/null on 0-2; its pid.

    Raises:
        OSError: it cannot be started.
    """
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds]  # clear of 3..5 before the dup2s
    null = os.devnull
    actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = [
        (os.POSIX_SPAWN_OPEN, 0, null, os.O_RDONLY, 0), (os.POSIX_SPAWN_OPEN, 1, null, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, null, os.O_WRONLY, 0)]
    actions += [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(high, start=3)]
    try:
        return os.posix_spawn(argv[0], argv, env, file_actions=actions)
    finally:
        for fd in high:
            os.close(fd)


def _stop_logger(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + LOGGER_STOP_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                time.sleep(0.05)
                continue
        return
    _log.warning("logging binary did not exit: killed")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)

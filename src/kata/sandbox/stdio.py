"""Where a container process's stdio goes on the host: sinks, sources, and the user's choice of them."""

from __future__ import annotations

import abc
import asyncio
import enum
import errno
import os
import stat
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

from kata.sandbox.errors import SandboxError

__all__ = [
    "PIPE",
    "BufferSink",
    "BytesSource",
    "FdSink",
    "FdSource",
    "HasFileno",
    "NullSink",
    "OutputBuffer",
    "Sink",
    "Source",
    "StdinTarget",
    "Stdio",
    "StdoutTarget",
    "open_stdio",
]

CHUNK = 65536
WRITE_CHUNK = 4096  # PIPE_BUF: a pipe that polls writable takes this much without blocking


class _Pipe(enum.Enum):
    PIPE = "pipe"


PIPE = _Pipe.PIPE
"""Make a pipe: the process's stream is then readable (or writable) as ``container.stdout`` etc."""


@runtime_checkable
class HasFileno(Protocol):
    """A file object: anything with ``fileno()``."""

    def fileno(self) -> int:
        """Its file descriptor."""


class OutputBuffer:
    """Collects a process's output in memory; ``getvalue()`` once the stream has ended (``eof``)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.eof = False

    def write(self, data: bytes) -> None:
        """Append ``data``."""
        self._chunks.append(data)

    def getvalue(self) -> bytes:
        """Everything written so far."""
        return b"".join(self._chunks)


StdinTarget = int | HasFileno | bytes | _Pipe | None
StdoutTarget = int | HasFileno | OutputBuffer | _Pipe | None


class Sink(abc.ABC):
    """Receives one output stream; ``close`` forwards its end."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Take ``data`` (never raises: a gone reader makes the rest be discarded)."""

    @abc.abstractmethod
    def close(self) -> None:
        """End of stream (idempotent)."""


class Source(abc.ABC):
    """Supplies one input stream."""

    @abc.abstractmethod
    async def read(self) -> bytes:
        """The next bytes; b"" at end of stream."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release it (idempotent)."""


def _pollable(fd: int) -> bool:
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _ready(fd: int, writer: bool) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if writer else (loop.add_reader, loop.remove_reader)
    add(fd, _wake, ready)
    try:
        await ready
    finally:
        remove(fd)


class FdSink(Sink):
    """Writes to a file descriptor it owns (closing it forwards EOF); polls pipes, ttys and sockets
    instead of blocking, without touching O_NONBLOCK of a description it may share with others."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._poll = _pollable(fd)
        self._broken = False

    async def write(self, data: bytes) -> None:
        """See :meth:`Sink.write`."""
        view = memoryview(data)
        while view and not self._broken and self.fd >= 0:
            if self._poll:
                await _ready(self.fd, writer=True)
            try:
                view = view[os.write(self.fd, view[:WRITE_CHUNK] if self._poll else view):]
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.EIO, errno.EBADF):
                    raise
                self._broken = True  # the reader is gone: drain the rest into nothing

    def close(self) -> None:
        """See :meth:`Sink.close`."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class BufferSink(Sink):
    """Appends to an :class:`OutputBuffer`."""

    def __init__(self, buffer: OutputBuffer) -> None:
        self.buffer = buffer

    async def write(self, data: bytes) -> None:
        """See :meth:`Sink.write`."""
        self.buffer.write(data)

    def close(self) -> None:
        """See :meth:`Sink.close`."""
        self.buffer.eof = True


class NullSink(Sink):
    """Discards the stream (it is still read, so the process never blocks on a full pipe)."""

    async def write(self, data: bytes) -> None:
        """See :meth:`Sink.write`."""

    def close(self) -> None:
        """See :meth:`Sink.close`."""


class FdSource(Source):
    """Reads a file descriptor it owns; polls pipes, ttys and sockets instead of blocking."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._poll = _pollable(fd)

    async def read(self) -> bytes:
        """See :meth:`Source.read`."""
        if self.fd < 0:
            return b""
        if self._poll:
            await _ready(self.fd, writer=False)
        try:
            return os.read(self.fd, CHUNK)
        except OSError as exc:
            if exc.errno == errno.EIO:  # a terminal whose other side closed
                return b""
            raise

    def close(self) -> None:
        """See :meth:`Source.close`."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class BytesSource(Source):
    """Supplies fixed bytes, then end of stream."""

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    async def read(self) -> bytes:
        """See :meth:`Source.read`."""
        data, self._data = self._data or b"", None
        return data

    def close(self) -> None:
        """See :meth:`Source.close`."""
        self._data = None


@dataclass
class Stdio:
    """A process's host-side stdio: what feeds stdin, where stdout/stderr go, and our pipe ends."""

    stdin: Source | None
    stdout: Sink
    stderr: Sink
    stdin_pipe: BinaryIO | None = None
    stdout_pipe: BinaryIO | None = None
    stderr_pipe: BinaryIO | None = None

    def close(self) -> None:
        """Close our sinks and source (not the user's pipe ends)."""
        for end in (self.stdin, self.stdout, self.stderr):
            if end is not None:
                end.close()


def _dup(target: int | HasFileno) -> int:
    try:
        return os.dup(target if isinstance(target, int) else target.fileno())
    except OSError as exc:
        raise SandboxError(f"stdio: {exc.strerror}") from exc


def _sink(target: StdoutTarget) -> tuple[Sink, BinaryIO | None]:
    if target is None:
        return NullSink(), None
    if isinstance(target, OutputBuffer):
        return BufferSink(target), None
    if target is PIPE:
        read, write = os.pipe2(os.O_CLOEXEC)
        return FdSink(write), os.fdopen(read, "rb", buffering=0)
    return FdSink(_dup(target)), None


def _source(target: StdinTarget) -> tuple[Source | None, BinaryIO | None]:
    if target is None:
        return None, None
    if isinstance(target, bytes):
        return BytesSource(target), None
    if target is PIPE:
        read, write = os.pipe2(os.O_CLOEXEC)
        return FdSource(read), os.fdopen(write, "wb", buffering=0)
    return FdSource(_dup(target)), None


def open_stdio(stdin: StdinTarget = None, stdout: StdoutTarget = None, stderr: StdoutTarget = None) -> Stdio:
    """Resolve the user's stdio choices: fds and file objects are dup'd (ours to close at EOF), PIPE
    makes a pipe, bytes feed stdin, an OutputBuffer collects output, None discards (stdin: none).

    Raises:
        SandboxError: an fd cannot be duplicated.
    """
    opened: list[Sink | Source | BinaryIO] = []
    try:
        source, stdin_pipe = _source(stdin)
        opened += [end for end in (source, stdin_pipe) if end is not None]
        out, stdout_pipe = _sink(stdout)
        opened += [end for end in (out, stdout_pipe) if end is not None]
        err, stderr_pipe = _sink(stderr)
    except BaseException:
        for end in opened:
            end.close()
        raise
    return Stdio(source, out, err, stdin_pipe, stdout_pipe, stderr_pipe)

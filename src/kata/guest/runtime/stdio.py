"""A process's stdio as the agent holds it: three pipes, or the master side of a pty."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading

from kata.errors import StateError
from kata.guest.runtime.errors import TerminalError

__all__ = ["TIOCSCTTY", "TIOCSWINSZ", "Stdio"]

TIOCSCTTY = 0x540E
TIOCSWINSZ = 0x5414
VEOF = b"\x04"  # what a terminal's ^D sends: read() returns 0 on an empty line


class _SharedFd:
    """An fd that is closed only once no thread is inside a call on it (no reuse under a reader)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._users = 0
        self._closing = False
        self._lock = threading.Lock()

    def acquire(self) -> int | None:
        with self._lock:
            if self._closing:
                return None
            self._users += 1
            return self._fd

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._closing and self._users == 0
        if last:
            os.close(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            idle = self._users == 0
        if idle:
            os.close(self._fd)


class Stdio:
    """Pipes (``terminal`` False) or a pty; the child ends go to the forked process, then are closed."""

    def __init__(self, terminal: bool, console_size: tuple[int, int] | None = None) -> None:
        self.terminal = terminal
        self._stdin_closed = False
        self.stdout_eof = False
        self.stderr_eof = terminal  # a terminal has no separate stderr
        if terminal:
            master, slave = os.openpty()
            self.console_path: str | None = os.ttyname(slave)
            self.child_fds = (slave, slave, slave)
            self._stdin = self._stdout = _SharedFd(master)
            self._stderr: _SharedFd | None = None
            if console_size is not None:
                _set_winsize(master, *console_size)
            return
        self.console_path = None
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        self.child_fds = (stdin_r, stdout_w, stderr_w)
        self._stdin = _SharedFd(stdin_w)
        self._stdout = _SharedFd(stdout_r)
        self._stderr = _SharedFd(stderr_r)

    @property
    def drained(self) -> bool:
        """Whether reads reached EOF on stdout and stderr."""
        return self.stdout_eof and self.stderr_eof

    def close_child_ends(self) -> None:
        """Close the agent's copies of the child's ends, so EOF comes when the process is done."""
        for fd in set(self.child_fds):
            if fd >= 0:
                os.close(fd)
        self.child_fds = (-1, -1, -1)

    def read_stdout(self, size: int) -> bytes:
        """Up to ``size`` bytes of output (the terminal's, with a pty); b"" only at EOF."""
        data = self._read(self._stdout, size)
        if not data:
            self.stdout_eof = True
        return data

    def read_stderr(self, size: int) -> bytes:
        """Up to ``size`` bytes of standard error; b"" at EOF (at once with a terminal)."""
        data = b"" if self._stderr is None else self._read(self._stderr, size)
        if not data:
            self.stderr_eof = True
        return data

    def _read(self, shared: _SharedFd, size: int) -> bytes:
        fd = shared.acquire()
        if fd is None:
            return b""
        try:
            return os.read(fd, size)
        except OSError as exc:
            if exc.errno == errno.EIO:  # pty master once every slave fd is closed
                return b""
            raise
        finally:
            shared.release()

    def write_stdin(self, data: bytes) -> int:
        """Write all of ``data``; returns its length.

        Raises:
            StateError: when stdin was closed.
            OSError: EPIPE when the process closed its stdin.
        """
        fd = None if self._stdin_closed else self._stdin.acquire()
        if fd is None:
            raise StateError("write stdin: stdin is closed", state="closed", required=("open",))
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            self._stdin.release()
        return len(data)

    def close_stdin(self) -> None:
        """Give the process EOF on stdin: close the pipe, or send ^D to a terminal."""
        if self._stdin_closed:
            return
        if self.terminal:
            self.write_stdin(VEOF)
            self._stdin_closed = True
            return
        self._stdin_closed = True
        self._stdin.close()

    def resize(self, rows: int, columns: int) -> None:
        """Set the terminal's window size (the process gets SIGWINCH).

        Raises:
            TerminalError: when the process has no terminal.
        """
        if not self.terminal:
            raise TerminalError("resize: the process has no terminal")
        fd = self._stdout.acquire()
        if fd is None:
            return
        try:
            _set_winsize(fd, rows, columns)
        finally:
            self._stdout.release()

    def close(self) -> None:
        """Close every fd (child ends included); later reads return b""."""
        self.close_child_ends()
        self._stdin_closed = True
        for shared in {id(s): s for s in (self._stdin, self._stdout, self._stderr) if s}.values():
            shared.close()


def _set_winsize(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

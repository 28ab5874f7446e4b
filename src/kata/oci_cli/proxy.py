"""The per-process host proxy: the pid an engine waits on for one container process. It relays the stdio
it was given (the fds ``create``/``exec`` inherited, or a pty whose master went to ``--console-socket``)
with the FIFOs the sandbox daemon writes and reads, forwards signals and window sizes, and exits with the
container process's exit status (128+signal when a signal killed it; 255 when its VM went away)."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import selectors
import shutil
import signal
import stat
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message

from kata.errors import KataError
from kata.oci_cli.client import TaskClient
from kata.oci_cli.console import window_size
from kata.protocols.pb import shim_task_pb2 as task

__all__ = ["DRAIN_TIMEOUT", "FORWARDED_SIGNALS", "LOST_EXIT_STATUS", "ProcessFifos", "ProxyIo", "run_proxy"]

CHUNK = 4096  # at most PIPE_BUF per write: a writable pipe takes it without blocking
DRAIN_TIMEOUT = 2.0  # after the exit, output still in flight gets this long to arrive
LOST_EXIT_STATUS = 255  # as Kata: the daemon (and with it the VM) went away
FORWARDED_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2,
                     signal.SIGALRM)
KILL_TIMEOUT = 10.0


def _pollable(fd: int) -> bool:
    """Whether epoll takes ``fd`` (not regular files, nor /dev/null)."""
    with select.epoll() as probe:
        try:
            probe.register(fd, select.EPOLLIN)
        except PermissionError:
            return False
        except OSError:
            return True
    return True


def is_null_device(fd: int) -> bool:
    """Whether ``fd`` is /dev/null (conmon gives it as stdin when the container gets none)."""
    try:
        info = os.fstat(fd)
    except OSError:
        return True
    return stat.S_ISCHR(info.st_mode) and os.major(info.st_rdev) == 1 and os.minor(info.st_rdev) == 3


class ProcessFifos:
    """FIFOs for one process's stdio in ``directory``: the daemon opens them by path; the proxy holds the
    other ends, opened before the daemon's so that neither side blocks (stdout/stderr: read ends; stdin: a
    read-write end, so the daemon's reader sees EOF only when the proxy closes it)."""

    def __init__(self, directory: Path, *, stdin: bool, stderr: bool) -> None:
        self.directory = directory
        directory.mkdir(parents=True, mode=0o700)
        self.stdin_path = self._fifo("stdin") if stdin else ""
        self.stdout_path = self._fifo("stdout")
        self.stderr_path = self._fifo("stderr") if stderr else ""
        flags = os.O_NONBLOCK | os.O_CLOEXEC
        self.stdin = os.open(self.stdin_path, os.O_RDWR | flags) if stdin else -1
        self.stdout = os.open(self.stdout_path, os.O_RDONLY | flags)
        self.stderr = os.open(self.stderr_path, os.O_RDONLY | flags) if stderr else -1

    def _fifo(self, name: str) -> str:
        path = str(self.directory / name)
        os.mkfifo(path, 0o600)
        return path

    def unlink(self) -> None:
        """Remove the FIFOs (once the daemon opened them); our ends stay open."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def fds(self) -> list[int]:
        """Our open ends."""
        return [fd for fd in (self.stdin, self.stdout, self.stderr) if fd >= 0]


@dataclass(frozen=True)
class ProxyIo:
    """The host side of a process's stdio: ``stdin`` (None: the process gets none), ``stdout``, ``stderr``
    (None with a terminal), and ``terminal``, the tty whose window size the process gets (None)."""

    stdin: int | None
    stdout: int
    stderr: int | None
    terminal: int | None = None


class _Relay:
    """Copies ``source`` to ``target`` through a small buffer; reads only while the buffer is empty."""

    def __init__(self, name: str, source: int, target: int | None) -> None:
        self.name = name
        self.source = source
        self.target = target  # None: read and drop
        self.buffer = b""
        self.eof = False
        # epoll refuses regular files (`run > out.txt`) and /dev/null: they are always ready
        self.poll_source = _pollable(source)
        self.poll_target = target is None or _pollable(target)

    def ready_without_poll(self) -> bool:
        """Whether the next step needs no readiness: a write to, or a read from, a regular file."""
        if self.buffer and self.target is not None:
            return not self.poll_target
        return not self.eof and not self.poll_source

    def read(self) -> None:
        try:
            data = os.read(self.source, 65536)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: the other side of a pty is gone
            if exc.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self.eof = True
        elif self.target is not None:
            self.buffer = data

    def write(self) -> None:
        assert self.target is not None
        try:
            written = os.write(self.target, self.buffer[:CHUNK])
        except BlockingIOError:
            return
        except OSError:  # the reader went away: drop what it would have got
            self.target, written = None, len(self.buffer)
        self.buffer = self.buffer[written:]


class _Proxy:
    def __init__(self, socket_path: str, container_id: str, exec_id: str, io: ProxyIo, fifos: ProcessFifos) -> None:
        self.socket_path = socket_path
        self.container_id = container_id
        self.exec_id = exec_id
        self.io = io
        self.fifos = fifos
        self.status: int | None = None
        self.signals: list[int] = []
        self.relays: list[_Relay] = []
        if io.stdin is not None and fifos.stdin >= 0:
            self.relays.append(_Relay("stdin", io.stdin, fifos.stdin))
        self.relays.append(_Relay("stdout", fifos.stdout, io.stdout))
        if fifos.stderr >= 0:
            self.relays.append(_Relay("stderr", fifos.stderr, io.stderr))

    def call(self, method: str, request: Message, response_type: type[Message], timeout: float = KILL_TIMEOUT) -> None:
        """One call on a connection of its own; failures are ignored (the process may be gone)."""
        with contextlib.suppress(KataError, OSError), TaskClient.connect(self.socket_path) as client:
            client.call(method, request, response_type, timeout=timeout)

    def _wait(self, done: int) -> None:
        status = LOST_EXIT_STATUS
        try:
            with TaskClient.connect(self.socket_path) as client:
                request = task.WaitRequest(id=self.container_id, exec_id=self.exec_id)
                status = client.call("Wait", request, task.WaitResponse, timeout=None).exit_status
        except (KataError, OSError):
            pass
        self.status = status & 0xFF
        os.write(done, b"x")

    def _on_signal(self, signum: int, frame: object) -> None:
        del frame
        self.signals.append(signum)

    def _forward_signals(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            if signum == signal.SIGWINCH:
                self.resize()
            elif self.status is None:
                self.call("Kill", task.KillRequest(id=self.container_id, exec_id=self.exec_id, signal=signum), Empty)

    def resize(self) -> None:
        """Send the terminal's size to the process (nothing without a terminal or a size)."""
        if self.io.terminal is None:
            return
        rows, columns = window_size(self.io.terminal)
        if rows and columns:
            self.call("ResizePty", task.ResizePtyRequest(id=self.container_id, exec_id=self.exec_id, width=columns,
                                                         height=rows), Empty)

    def run(self) -> int:
        done_r, done_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        previous_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        handled = (*FORWARDED_SIGNALS, signal.SIGWINCH)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in handled}
        threading.Thread(target=self._wait, args=(done_w,), name="wait", daemon=True).start()
        self.resize()
        try:
            self._loop(done_r, wake_r)
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for fd in (done_r, wake_r, wake_w):
                os.close(fd)
        if self.exec_id:  # the daemon forgets a finished exec only when asked
            self.call("Delete", task.DeleteRequest(id=self.container_id, exec_id=self.exec_id), task.DeleteResponse)
        assert self.status is not None
        return self.status

    def _loop(self, done: int, wake: int) -> None:
        deadline: float | None = None
        while True:
            outputs = [r for r in self.relays if r.name != "stdin" and not (r.eof and not r.buffer)]
            if self.status is not None:
                deadline = deadline or time.monotonic() + DRAIN_TIMEOUT
                if not outputs or time.monotonic() >= deadline:
                    return
            with selectors.DefaultSelector() as selector:
                selector.register(done, selectors.EVENT_READ, None)
                selector.register(wake, selectors.EVENT_READ, None)
                immediate = self._register(selector)
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready = selector.select(0 if immediate else timeout)
            self._step_unpolled()
            for key, events in ready:
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(key.fd, 512)
                elif events & selectors.EVENT_WRITE:
                    key.data.write()
                else:
                    key.data.read()
            self._close_stdin_at_eof()
            self._forward_signals()

    def _register(self, selector: selectors.BaseSelector) -> bool:
        """Register what waits for readiness; whether some relay can go on without waiting."""
        immediate = False
        for relay in self.relays:
            if relay.name == "stdin" and self.status is not None:
                continue
            if relay.ready_without_poll():
                immediate = True
            elif relay.buffer and relay.target is not None:
                selector.register(relay.target, selectors.EVENT_WRITE, relay)
            elif not relay.eof:
                selector.register(relay.source, selectors.EVENT_READ, relay)
        return immediate

    def _step_unpolled(self) -> None:
        for relay in self.relays:
            if relay.ready_without_poll() and (relay.name != "stdin" or self.status is None):
                relay.write() if relay.buffer else relay.read()

    def _close_stdin_at_eof(self) -> None:
        """The host's stdin ended (and what it sent has been passed on): the process's stdin ends too."""
        for relay in self.relays:
            if relay.name == "stdin" and relay.eof and not relay.buffer and self.fifos.stdin >= 0:
                os.close(self.fifos.stdin)
                self.fifos.stdin = -1
                relay.target = None


def run_proxy(socket_path: str, container_id: str, exec_id: str, io: ProxyIo, fifos: ProcessFifos) -> int:
    """Relay until the process exited and its output drained (at most DRAIN_TIMEOUT s after the exit);
    the exit status. A terminal ``io.terminal`` that is our own is put in raw mode meanwhile."""
    saved = _raw(io.terminal)
    try:
        return _Proxy(socket_path, container_id, exec_id, io, fifos).run()
    finally:
        if saved is not None and io.terminal is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(io.terminal, termios.TCSADRAIN, saved)


def _raw(fd: int | None) -> list[Any] | None:
    if fd is None:
        return None
    import tty
    try:
        saved: list[Any] = termios.tcgetattr(fd)
        tty.setraw(fd)
    except termios.error:
        return None
    return saved

"""Setting up one container process's host side: its FIFOs, a pty for ``--console-socket`` (or our own
terminal), and the proxy, forked (``create``, ``exec -d``) or run in this process (``run``, ``exec``)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import termios
from pathlib import Path

from kata.oci_cli.console import HostPty, send_console
from kata.oci_cli.errors import OciCliError
from kata.oci_cli.layout import write_atomically
from kata.oci_cli.proxy import ProcessFifos, ProxyIo, is_null_device, run_proxy

__all__ = ["ProcessLaunch", "check_terminal", "write_pid_file"]

GO = b"1"


class ProcessLaunch:
    """The host side of one process before the daemon is asked for it: FIFOs (``stdin``/``stdout``/
    ``stderr`` paths for Create or Exec) and the proxy's stdio. ``fork()`` starts the proxy waiting
    for ``release()``; ``abandon()`` (or a failure) makes a forked proxy exit without doing anything."""

    def __init__(self, io_dir: Path, *, terminal: bool, console_socket: str | None, detach: bool) -> None:
        self.terminal = terminal
        self.console_socket = console_socket
        self.pty: HostPty | None = None
        self.proxy_pid = 0
        self._go: int | None = None
        self.io = self._host_io(detach)
        has_stdin = self.io.stdin is not None
        self.fifos = ProcessFifos(io_dir, stdin=has_stdin, stderr=not terminal)

    def _host_io(self, detach: bool) -> ProxyIo:
        check_terminal(self.terminal, self.console_socket, detach)
        if self.terminal and self.console_socket:
            self.pty = HostPty()
            slave = self.pty.slave
            # two descriptions of the slave: the relay polls its reading and its writing apart
            return ProxyIo(stdin=slave, stdout=os.dup(slave), stderr=None, terminal=slave)
        if self.terminal:
            own = 0 if os.isatty(0) else None
            return ProxyIo(stdin=0, stdout=1, stderr=None, terminal=own)
        return ProxyIo(stdin=None if is_null_device(0) else 0, stdout=1, stderr=2)

    @property
    def paths(self) -> tuple[str, str, str]:
        """(stdin, stdout, stderr) for the daemon; "" where unused."""
        return self.fifos.stdin_path, self.fifos.stdout_path, self.fifos.stderr_path

    def fork(self, socket_path: str, container_id: str, exec_id: str) -> int:
        """Fork the proxy (a child of ours, so our caller's subreaper inherits it); it waits for
        :meth:`release`. Returns its pid."""
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the proxy
            os.close(go_w)
            self._become_proxy(go_r, socket_path, container_id, exec_id)
        os.close(go_r)
        self._go = go_w
        self.proxy_pid = pid
        return pid

    def _become_proxy(self, go: int, socket_path: str, container_id: str, exec_id: str) -> None:
        code = 1
        try:
            keep = {0, 1, 2, go, *self.fifos.fds(), *self._pty_fds()}
            _close_all_but(keep)
            if self.pty is not None:
                os.setsid()  # the pty becomes our controlling terminal: resizes arrive as SIGWINCH
                fcntl.ioctl(self.pty.slave, termios.TIOCSCTTY, 0)
            if os.read(go, 1) == GO:
                os.close(go)
                code = run_proxy(socket_path, container_id, exec_id, self.io, self.fifos)
        except BaseException:  # a forked child must never return into the parent's code
            code = 255
            with contextlib.suppress(BaseException):
                import traceback
                with open(self.fifos.directory.parent.parent / "proxy.log", "a") as log:
                    traceback.print_exc(file=log)
        os._exit(code)

    def started(self, name_hint: str = "") -> None:
        """The daemon opened the FIFOs: remove them; hand the pty's master to the console socket."""
        del name_hint
        self.fifos.unlink()
        if self.pty is not None and self.console_socket:
            send_console(self.console_socket, self.pty.master, self.pty.name)
            self.pty.close_master()

    def release(self) -> None:
        """Let the forked proxy run, and drop our copies of its fds."""
        if self._go is not None:
            os.write(self._go, GO)
            os.close(self._go)
            self._go = None
        self.close()

    def abandon(self) -> None:
        """Something failed: a forked proxy exits (we reap it), the FIFOs go."""
        if self._go is not None:
            os.close(self._go)
            self._go = None
        if self.proxy_pid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.proxy_pid, 0)
            self.proxy_pid = 0
        self.fifos.unlink()
        self.close()

    def close(self) -> None:
        """Close our ends (the proxy, forked or this process's loop, has its own)."""
        for fd in self.fifos.fds():
            os.close(fd)
        self.fifos.stdin = self.fifos.stdout = self.fifos.stderr = -1
        if self.pty is not None:
            self.pty.close_master()
            for fd in self._pty_fds():
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _pty_fds(self) -> list[int]:
        return [self.pty.slave, self.io.stdout] if self.pty is not None else []

    def run_here(self, socket_path: str, container_id: str, exec_id: str) -> int:
        """Be the proxy in this process (``run`` and ``exec`` without --detach); the exit status."""
        try:
            return run_proxy(socket_path, container_id, exec_id, self.io, self.fifos)
        finally:
            self.close()


def check_terminal(terminal: bool, console_socket: str | None, detach: bool) -> None:
    """runc's rules: a detached terminal needs a console socket; a console socket needs a terminal.

    Raises:
        OciCliError: the combination is not allowed.
    """
    if terminal and detach and not console_socket:
        raise OciCliError("cannot allocate tty if runc will detach without setting console socket")
    if console_socket and not terminal:
        raise OciCliError("cannot use console socket if runc will not detach or allocate tty")


def _close_all_but(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def write_pid_file(path: str, pid: int) -> None:
    """The pid, no newline, written atomically (runc's createPidFile)."""
    write_atomically(Path(os.path.abspath(path)), str(pid))

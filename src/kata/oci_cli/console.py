"""Terminals on the host side: a pty whose master goes to ``--console-socket`` (runc's SendFd), and sizes."""

from __future__ import annotations

import array
import fcntl
import os
import socket
import struct
import termios
import tty

from kata.oci_cli.errors import OciCliError
from kata.oci_cli.layout import short_path

__all__ = ["HostPty", "send_console", "window_size"]

_WINSIZE = struct.Struct("HHHH")


class HostPty:
    """A host pty pair: ``master`` is handed to the engine, ``slave`` (raw: the guest's terminal does the
    line discipline) is relayed with the guest's terminal."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.name = os.ttyname(self.slave)

    def close_master(self) -> None:
        """Our copy of the master (the engine has its own now)."""
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


def send_console(path: str, master: int, name: str) -> None:
    """Send ``master`` over the unix socket at ``path``: one SCM_RIGHTS fd, the pty's name as the data
    (runc's utils.SendFd, what conmon and containerd's go-runc receive).

    Raises:
        OciCliError: the socket cannot be reached or the send failed.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            with short_path(path) as address:
                sock.connect(address)
            rights = array.array("i", [master]).tobytes()
            sock.sendmsg([name.encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
    except OSError as exc:
        raise OciCliError(f"send the console to {path}: {exc.strerror or exc}") from exc


def window_size(fd: int) -> tuple[int, int]:
    """(rows, columns) of the terminal ``fd``; (0, 0) when it has none."""
    try:
        rows, columns, _, _ = _WINSIZE.unpack(fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(_WINSIZE.size)))
    except OSError:
        return 0, 0
    return rows, columns

"""The agent proper, behind one function: ``serve(channel, context)``.

This is the seam the ttRPC server plugs into. The version here is a stand-in that lets the image be
tested end to end: a line protocol on the channel (``PING`` -> ``PONG <uptime>``, ``SANDBOX <id>``
-> ``OK``, ``POWEROFF`` -> ``BYE`` and return). Contract for the replacement: serve until the host
asks the VM to stop, then return (init powers the machine off); raise only for a broken channel;
get child exit codes from ``context.reaper`` (never waitpid); call ``context.modules.wait()`` before
using a device or filesystem whose driver is a module; import nothing slow at module level.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kata.guest.channel import Channel
    from kata.guest.cmdline import GuestOptions
    from kata.guest.log import GuestLog
    from kata.guest.modules import ModuleLoader
    from kata.guest.reaper import Reaper

__all__ = ["GuestContext", "handle_line", "serve"]

# A serial port whose host side is gone reads b"" at once, again and again: do not spin on it.
DISCONNECTED_BACKOFF = 0.05
MAX_LINE = 4096


class GuestContext:
    """What init hands the agent: command-line options, console log, child reaper, module loader."""

    __slots__ = ("log", "modules", "options", "reaper")

    def __init__(self, options: GuestOptions, log: GuestLog, reaper: Reaper, modules: ModuleLoader) -> None:
        self.options = options
        self.log = log
        self.reaper = reaper
        self.modules = modules


def handle_line(line: bytes, context: GuestContext) -> tuple[bytes, bool]:
    """The reply to one request line, and whether the agent should stop."""
    command, _, argument = line.strip().partition(b" ")
    if command == b"PING":
        return b"PONG %.3f\n" % time.monotonic(), False
    if command == b"SANDBOX" and argument:
        context.log.sandbox_id = argument.decode(errors="replace")
        context.log.info("sandbox id set")
        return b"OK\n", False
    if command == b"POWEROFF":
        context.log.info("power off requested by the host")
        return b"BYE\n", True
    return b"ERR unknown command\n", False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _serve_stream(fd: int, context: GuestContext, *, reconnects: bool) -> bool:
    """Answer lines on ``fd``; True when asked to stop, False when a connection ended."""
    pending = b""
    while True:
        data = os.read(fd, MAX_LINE)
        if not data:
            if not reconnects:
                return False
            time.sleep(DISCONNECTED_BACKOFF)
            continue
        pending += data
        while b"\n" in pending:
            line, _, pending = pending.partition(b"\n")
            reply, stop = handle_line(line, context)
            _write_all(fd, reply)
            if stop:
                return True
        if len(pending) > MAX_LINE:
            pending = b""
            _write_all(fd, b"ERR line too long\n")


def serve(channel: Channel, context: GuestContext) -> None:
    """Serve the host on ``channel`` until it asks the VM to power off.

    Raises:
        OSError: when the channel breaks.
    """
    if channel.kind == "serial":
        _serve_stream(channel.fd, context, reconnects=True)
        return
    import socket

    listener = socket.socket(fileno=channel.fd)
    while True:
        conn, peer = listener.accept()
        context.log.info("host connected", peer=peer)
        with conn:
            if _serve_stream(conn.fileno(), context, reconnects=False):
                return

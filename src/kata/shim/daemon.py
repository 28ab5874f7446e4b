"""The shim daemon: the Task service on the socket ``start`` passed as fd 3, until Shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket

from kata.log import configure, fields
from kata.protocols.services import TASK_SERVICE
from kata.shim.address import socket_path
from kata.shim.main import ShimFlags
from kata.shim.monitor import ShimMonitor
from kata.shim.publisher import MemoryPublisher, Publisher, RemotePublisher
from kata.shim.service import TaskService
from kata.ttrpc.aio import AsyncServer
from kata.ttrpc.dispatch import Router

__all__ = ["LISTEN_FD", "LOG_FIFO", "run"]

_log = logging.getLogger("kata.shim")
LISTEN_FD = 3  # containerd's convention: the listening socket `start` created
LOG_FIFO = "log"  # in the bundle (our cwd): containerd reads it and copies it into its own log
CLOSE_GRACE = 2.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _log_to_containerd(debug: bool) -> None:
    """Send our log records to the bundle's ``log`` FIFO (containerd holds its read end), as stderr."""
    try:
        fd = os.open(LOG_FIFO, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENXIO):
            raise
    else:
        os.set_blocking(fd, True)
        os.dup2(fd, 2)
        os.close(fd)
    configure(debug=debug)


def _publisher(namespace: str) -> Publisher:
    address = os.environ.get("TTRPC_ADDRESS", "")
    if not address:
        _log.warning("TTRPC_ADDRESS is not set: events are not published")
        return MemoryPublisher()
    return RemotePublisher(address, namespace)


async def _accept(listener: socket.socket, server: AsyncServer) -> None:
    loop = asyncio.get_running_loop()
    peers: set[asyncio.Task[None]] = set()
    while True:
        connection, _ = await loop.sock_accept(listener)
        reader, writer = await asyncio.open_connection(sock=connection)
        peer = loop.create_task(server.serve_stream(reader, writer), name="ttrpc-peer")
        peers.add(peer)
        peer.add_done_callback(peers.discard)


def _listener(flags: ShimFlags) -> socket.socket:
    if flags.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(socket_path(flags.socket))
        sock.listen(128)
    else:
        sock = socket.socket(fileno=LISTEN_FD)
    sock.setblocking(False)
    return sock


def _remove_socket(flags: ShimFlags, listener: socket.socket) -> None:
    """Unlink the socket file we served (containerd's shims do this on the way out)."""
    path = listener.getsockname()
    listener.close()
    if isinstance(path, str) and path and not path.startswith("\0"):
        with contextlib.suppress(OSError):
            os.unlink(path)


async def serve(flags: ShimFlags) -> None:
    """Serve until Shutdown finds no task left, or SIGTERM/SIGINT (which remove every task first)."""
    loop = asyncio.get_running_loop()
    listener = _listener(flags)
    publisher = _publisher(flags.namespace)
    service = TaskService(publisher, namespace=flags.namespace, config_path=flags.config)
    monitor = ShimMonitor(lambda: len(service.tasks))  # shim-monitor.sock while the sandbox lives
    service.watchers.append(monitor)
    router = Router()
    router.register(TASK_SERVICE, service.methods())
    server = AsyncServer(router)
    stop = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    os.register_at_fork(after_in_child=_default_signals)
    accepting = loop.create_task(_accept(listener, server), name="accept")
    _log.info("shim serving", extra=fields(id=flags.id, namespace=flags.namespace, pid=os.getpid()))
    done = [loop.create_task(event.wait()) for event in (service.shutdown_requested, stop)]
    await asyncio.wait(done, return_when=asyncio.FIRST_COMPLETED)
    for waiter in done:
        waiter.cancel()
    if stop.is_set():
        _log.info("signalled: removing every task", extra=fields(id=flags.id))
        await service.close()
    accepting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await accepting
    _remove_socket(flags, listener)
    await monitor.close()
    await server.close(grace=CLOSE_GRACE)
    await publisher.close()
    _log.info("shim exiting", extra=fields(id=flags.id))


def _default_signals() -> None:
    """In a child a library forks (pyroute2's netns helpers): without this it shares our signal wakeup fd,
    and a SIGTERM it is sent would reach our loop as if we had got it, removing every task."""
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)


def run(flags: ShimFlags) -> int:
    """The daemon's main: log to containerd, serve, exit 0."""
    _log_to_containerd(flags.debug)
    asyncio.run(serve(flags))
    return 0

"""virtiofsd: its argv (pure) and a supervised start on a socket pykata listens on before the VMM starts."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

from kata.errors import HypervisorError
from kata.hypervisor.devices import SharedFs
from kata.hypervisor.process import ChildProcess, spawn

__all__ = ["listen_unix", "start_virtiofsd", "virtiofsd_argv"]


def virtiofsd_argv(daemon: str, source: str, fd: int, *, cache: str = "auto",
                   extra_args: Sequence[str] = (), debug: bool = False) -> list[str]:
    """The C virtiofsd (QEMU 7.2) command line serving ``source`` on the listening socket ``fd``.

    ``--fd`` rather than ``--socket-path``: the socket exists (and queues QEMU's connect) before
    virtiofsd runs, so there is no race to wait out, and a probe connect cannot use up the one
    connection virtiofsd accepts. ``sandbox=chroot`` works where namespaces are not available.
    """
    argv = [daemon, f"--fd={fd}", "-o", f"source={source}", "-o", f"cache={cache}", "-o", "sandbox=chroot"]
    if debug:
        argv += ["-o", "log_level=debug"]
    return [*argv, *extra_args]


def listen_unix(path: str) -> socket.socket:
    """A listening unix socket bound at ``path`` (a stale socket file there is replaced).

    Raises:
        HypervisorError: the path cannot be bound.
    """
    with contextlib.suppress(FileNotFoundError):
        if Path(path).is_socket():
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(1)
    except OSError as exc:
        sock.close()
        raise HypervisorError(f"listen on {path}: {exc.strerror or exc}") from exc
    return sock


async def start_virtiofsd(stack: AsyncExitStack, fs: SharedFs, *, daemon: str, cache: str = "auto",
                          extra_args: Sequence[str] = (), debug: bool = False,
                          sandbox_id: str = "") -> ChildProcess:
    """Start a virtiofsd for ``fs``; ``stack`` gets its undo (terminate it, remove its socket).

    Raises:
        HypervisorError: the shared dir is missing, the socket cannot be bound, or virtiofsd cannot run.
    """
    if not Path(fs.source).is_dir():
        raise HypervisorError(f"virtiofsd: shared directory {fs.source} does not exist")
    sock = listen_unix(fs.socket_path)
    stack.callback(_unlink, fs.socket_path)
    log_path = f"{fs.socket_path}.log"
    stack.callback(_unlink, log_path)
    try:
        argv = virtiofsd_argv(daemon, fs.source, sock.fileno(), cache=cache, extra_args=extra_args,
                              debug=debug)
        child = await spawn(argv, name=f"virtiofsd-{fs.id}", log_path=Path(log_path), pass_fds=[sock.fileno()],
                            sandbox_id=sandbox_id)
    finally:
        sock.close()  # virtiofsd holds its own copy; it goes away with virtiofsd
    # virtiofsd exits by itself once QEMU hangs up; SIGTERM is only for when it does not.
    stack.push_async_callback(child.terminate, 2.0)
    return child


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

"""Network namespaces: which one a spec names, running a step inside one, creating and removing our own."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from kata.errors import NetworkError
from kata.oci import Spec

__all__ = ["create_netns", "in_netns", "remove_netns", "spec_netns"]

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


def spec_netns(spec: Spec) -> str | None:
    """The network namespace a container's spec asks for: its path, ``""`` for a new one, None for the
    host's (no ``network`` entry in ``linux.namespaces``)."""
    if spec.linux is None:
        return None
    for namespace in spec.linux.namespaces:
        if namespace.type == "network":
            return namespace.path or ""
    return None


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def in_netns(path: str, step: Callable[[], T]) -> T:
    """Run ``step`` on a thread of its own that has joined the network namespace at ``path`` (setns
    changes only the calling thread; the thread ends with the step, so no other code ever runs there).
    What a socket or tun device opened by ``step`` belongs to is that namespace.

    Raises:
        NetworkError: the namespace cannot be entered.
        Exception: whatever ``step`` raised.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            failure.append(NetworkError(f"enter network namespace {path}: {exc.strerror}"))
            return
        try:
            outcome.append(step())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="kata-netns", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def create_netns(name: str) -> str:
    """Create the named network namespace under /run/netns (as ``ip netns add``); its path.

    Raises:
        NetworkError: it exists or cannot be created.
    """
    from pyroute2 import netns  # type: ignore[import-untyped]

    path = os.path.join(NETNS_DIR, name)
    if os.path.exists(path):
        raise NetworkError(f"network namespace {path} exists already")
    try:
        netns.create(name)
    except OSError as exc:
        raise NetworkError(f"create network namespace {name}: {exc.strerror or exc}") from exc
    return path


def remove_netns(path: str) -> None:
    """Remove a namespace :func:`create_netns` made (nothing if it is gone already).

    Raises:
        NetworkError: it cannot be removed.
    """
    from pyroute2 import netns

    if not os.path.exists(path):
        return
    try:
        netns.remove(os.path.basename(path))
    except OSError as exc:
        raise NetworkError(f"remove network namespace {path}: {exc.strerror or exc}") from exc

"""Network namespaces: which one a spec names, running a step inside one, creating and removing our own."""

from __future__ import annotations

import ctypes
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


_libc = ctypes.CDLL(None, use_errno=True)  # the process's own libc (find_library would run ldconfig -p)
MS_BIND, MS_REC, MS_SHARED, MNT_DETACH = 0x1000, 0x4000, 0x100000, 2


def _check(result: int) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _setns(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET))


def _mount(source: bytes, target: bytes, flags: int) -> None:
    _check(_libc.mount(source, target, b"none", ctypes.c_ulong(flags), None))


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


def _share_netns_dir() -> None:
    """Make /run/netns a shared mount (binding it onto itself first if it is no mount), as ``ip netns add``
    does, so that a namespace mounted there shows in every mount namespace."""
    os.makedirs(NETNS_DIR, mode=0o755, exist_ok=True)
    directory = NETNS_DIR.encode()
    try:
        _mount(b"", directory, MS_SHARED | MS_REC)
    except OSError:
        _mount(directory, directory, MS_BIND | MS_REC)
        _mount(b"", directory, MS_SHARED | MS_REC)


def create_netns(name: str) -> str:
    """Create the named network namespace under /run/netns (as ``ip netns add``); its path.

    A thread of ours unshares its network namespace and binds it to the path, then ends (no fork, and
    none of pyroute2's import cost, 0.15-0.25 s, on a sandbox start that has no endpoint to wire).

    Raises:
        NetworkError: it exists or cannot be created.
    """
    path = os.path.join(NETNS_DIR, name)
    failure: list[OSError] = []

    def bind_new() -> None:
        try:
            _check(_libc.unshare(CLONE_NEWNET))
            _mount(f"/proc/self/task/{threading.get_native_id()}/ns/net".encode(), path.encode(), MS_BIND)
        except OSError as exc:
            failure.append(exc)

    try:
        _share_netns_dir()
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    except FileExistsError:
        raise NetworkError(f"network namespace {path} exists already") from None
    except OSError as exc:
        raise NetworkError(f"create network namespace {name}: {exc.strerror or exc}") from exc
    thread = threading.Thread(target=bind_new, name="kata-netns-new", daemon=True)
    thread.start()
    thread.join()
    if failure:
        os.unlink(path)
        raise NetworkError(f"create network namespace {name}: {failure[0].strerror}")
    return path


def remove_netns(path: str) -> None:
    """Remove a namespace :func:`create_netns` made (nothing if it is gone already).

    Raises:
        NetworkError: it cannot be removed.
    """
    if not os.path.exists(path):
        return
    try:
        _libc.umount2(path.encode(), MNT_DETACH)  # not mounted (half made): the unlink still goes
        os.unlink(path)
    except OSError as exc:
        raise NetworkError(f"remove network namespace {path}: {exc.strerror or exc}") from exc

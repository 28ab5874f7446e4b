"""Unix socket helpers shared by both servers: listen, and remove the socket file we created."""

from __future__ import annotations

import contextlib
import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

__all__ = ["listen_unix", "remove_socket_file", "socket_file_inode"]


def listen_unix(path: str, backlog: int = 128) -> socket.socket:
    """A unix stream socket listening on ``path`` (which must not exist yet; ``\\0name`` is abstract).

    Raises:
        OSError: the socket cannot be created, bound or listened on.
    """
    import socket  # not at module level: the guest's serial-only server never needs it

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def socket_file_inode(path: str) -> int | None:
    """The inode of the socket file at ``path``; None for abstract or vanished sockets."""
    if not path or path.startswith("\0"):
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino if stat.S_ISSOCK(info.st_mode) else None


def remove_socket_file(path: str, inode: int | None) -> None:
    """Unlink ``path`` if it is still the socket file we bound (same inode). Never raises."""
    if inode is None or socket_file_inode(path) != inode:
        return
    with contextlib.suppress(OSError):
        os.unlink(path)

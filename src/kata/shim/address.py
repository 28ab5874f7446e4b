"""Where a shim listens: containerd 1.6's socket address for a (containerd address, namespace, id)."""

from __future__ import annotations

import hashlib
import posixpath

__all__ = ["SOCKET_ROOT", "go_join", "socket_address", "socket_path"]

# containerd's defaults.DefaultStateDir + "/s" (pkg runtime/v2/shim, util_unix.go, socketRoot).
SOCKET_ROOT = "/run/containerd/s"
SCHEME = "unix://"


def go_join(*elements: str) -> str:
    """Go's ``filepath.Join``: skip empty elements, join with "/", then ``filepath.Clean``."""
    joined = "/".join(e for e in elements if e)
    if not joined:
        return ""
    cleaned = posixpath.normpath(joined)
    # normpath keeps exactly two leading slashes (POSIX allows them a meaning); Go's Clean does not.
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def socket_address(containerd_address: str, namespace: str, container_id: str, root: str = SOCKET_ROOT) -> str:
    """``unix:///run/containerd/s/<hex sha256 of Join(address, namespace, id)>``, as containerd 1.6's
    ``shim.SocketAddress`` computes it (so every shim of that id agrees on one socket)."""
    digest = hashlib.sha256(go_join(containerd_address, namespace, container_id).encode()).hexdigest()
    return f"{SCHEME}{root}/{digest}"


def socket_path(address: str) -> str:
    """The filesystem path of a ``unix://`` address (a bare path is returned as it is)."""
    return address.removeprefix(SCHEME)

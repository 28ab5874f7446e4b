"""ttRPC addresses: ``unix:///abs/path``, ``unix:path``, a bare path, or ``@name`` (abstract)."""

from __future__ import annotations

__all__ = ["unix_path"]


def unix_path(address: str) -> str:
    """The socket path an address names (abstract ``@name`` becomes ``\\0name``).

    Raises:
        ValueError: the address is empty or uses a scheme other than ``unix``.
    """
    path = address
    if address.startswith("unix://"):
        path = address[len("unix://") :]
    elif address.startswith("unix:"):
        path = address[len("unix:") :]
    elif "://" in address:
        raise ValueError(f"unsupported ttRPC address {address!r}: only unix: is supported here")
    if not path:
        raise ValueError(f"ttRPC address {address!r} names no socket path")
    if path.startswith("@"):
        return "\0" + path[1:]
    return path

"""Errors of the guest network layer, each a KataError the network service maps to a gRPC code.

::

    KataError
     └── NetworkError              a guest network request could not be carried out
          ├── NetworkRequestError  the request itself is malformed, naming the field  (INVALID_ARGUMENT)
          ├── LinkNotFoundError    no link has the MAC address or name asked for      (NOT_FOUND)
          └── NetlinkError         the kernel refused a netlink request; ``errno`` says why
                                   (EINVAL, ENETUNREACH: INVALID_ARGUMENT; EEXIST: ALREADY_EXISTS; ...)
"""

from __future__ import annotations

import os

from kata.errors import KataError

__all__ = ["LinkNotFoundError", "NetlinkError", "NetworkError", "NetworkRequestError"]


class NetworkError(KataError):
    """A guest network request could not be carried out."""


class NetworkRequestError(NetworkError):
    """The request is malformed; the message names the field and the value."""


class LinkNotFoundError(NetworkError):
    """No link has the MAC address or name the request gives."""


class NetlinkError(NetworkError):
    """The kernel answered a netlink request with an error: what was asked, errno and the kernel's reason."""

    def __init__(self, what: str, errno: int, reason: str = "") -> None:
        detail = os.strerror(errno) + (f" ({reason})" if reason and reason != os.strerror(errno) else "")
        super().__init__(f"{what}: {detail}")
        self.errno = errno

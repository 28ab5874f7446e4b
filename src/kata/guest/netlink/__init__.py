"""The guest's network layer: netlink (through pyroute2's message classes) behind Kata's network RPCs.

Submodules: ``errors`` (the exception tree), ``model`` (links, addresses, routes, neighbours),
``translate`` (types_pb2 <-> model, the only one that sees protobuf), ``rtnl`` (the only one that
imports pyroute2) and ``guestnet`` (Kata's semantics over rtnl). Importing this package imports
only the errors: pyroute2 is loaded when the first network RPC arrives, never at agent start-up.
"""

from __future__ import annotations

from kata.guest.netlink.errors import LinkNotFoundError, NetlinkError, NetworkError, NetworkRequestError

__all__ = ["LinkNotFoundError", "NetlinkError", "NetworkError", "NetworkRequestError"]

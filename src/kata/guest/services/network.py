"""grpc.AgentService network RPCs (UpdateInterface, UpdateRoutes, ListInterfaces, ListRoutes,
AddARPNeighbors) over kata.guest.netlink, which is imported when the first of them arrives."""

from __future__ import annotations

import errno
import functools
import threading
import time

from google.protobuf import empty_pb2

from kata.guest.netlink.errors import LinkNotFoundError, NetlinkError, NetworkRequestError
from kata.guest.services.errors import ERRNO_STATUS, rpc
from kata.protocols.pb import agent_pb2, types_pb2
from kata.ttrpc.status import (
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    StatusError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    from kata.guest.log import GuestLog
    from kata.guest.netlink.guestnet import GuestNetwork
    from kata.ttrpc.dispatch import CallContext, MethodSpec

    F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["NETLINK_STATUS", "NetworkService"]

EMPTY = empty_pb2.Empty
# How long UpdateInterface waits for a NIC still arriving (a request naming its device path).
LINK_WAIT = 10.0

# The kernel's refusals by errno (the agent's common ones, plus netlink's own); anything else is INTERNAL.
NETLINK_STATUS: dict[int, type[StatusError]] = {
    **ERRNO_STATUS,
    errno.ERANGE: InvalidArgumentError,
    errno.ENETUNREACH: InvalidArgumentError,  # a gateway no link-scope route reaches
    errno.EAFNOSUPPORT: InvalidArgumentError,
    errno.EADDRNOTAVAIL: InvalidArgumentError,  # a preferred source the guest does not have
    errno.ENODEV: NotFoundError,
    errno.ESRCH: NotFoundError,
    errno.EBUSY: FailedPreconditionError,
    errno.ENETDOWN: FailedPreconditionError,  # a route out of a link that is down
}


def network_rpc(method: str) -> Callable[[F], F]:
    """:func:`rpc`, with the network layer's errors mapped to their codes (one line naming the problem)."""
    def wrap(handler: F) -> F:
        @functools.wraps(handler)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            except NetworkRequestError as exc:
                raise InvalidArgumentError(f"{method}: {exc}") from exc
            except LinkNotFoundError as exc:
                raise NotFoundError(f"{method}: {exc}") from exc
            except NetlinkError as exc:
                raise NETLINK_STATUS.get(exc.errno, InternalError)(f"{method}: {exc}") from exc
        return rpc(method)(run)  # type: ignore[return-value]
    return wrap


class NetworkService:
    """Handlers of the network RPCs; one netlink socket (opened at the first call), one call at a time."""

    def __init__(self, log: GuestLog, *, wait_modules: Callable[[float], bool] | None = None) -> None:
        self.log = log
        self.wait_modules = wait_modules
        self._lock = threading.Lock()
        self._network: GuestNetwork | None = None

    def _guest_network(self) -> GuestNetwork:
        """The network layer; pyroute2 is imported here, at the first network RPC (never at start-up)."""
        if self._network is None:
            started = time.monotonic()
            from kata.guest.netlink.guestnet import GuestNetwork
            from kata.guest.netlink.rtnl import RouteSocket

            self._network = GuestNetwork(RouteSocket(), self.log, wait_modules=self.wait_modules)
            self.log.info("network layer loaded", seconds=f"{time.monotonic() - started:.3f}")
        return self._network

    @network_rpc("UpdateInterface")
    def update_interface(self, request: agent_pb2.UpdateInterfaceRequest,
                         context: CallContext) -> types_pb2.Interface:
        from kata.guest.netlink import translate

        if not request.HasField("interface"):
            raise InvalidArgumentError("UpdateInterface: the request has no interface")
        config = translate.interface_from_pb(request.interface)
        remaining = context.time_remaining()
        wait = min(LINK_WAIT, LINK_WAIT if remaining is None else remaining) if config.device_path else 0.0
        with self._lock:
            link = self._guest_network().update_interface(config, wait=wait)
        return translate.interface_to_pb(link, device_path=config.device_path)

    @network_rpc("UpdateRoutes")
    def update_routes(self, request: agent_pb2.UpdateRoutesRequest, context: CallContext) -> agent_pb2.Routes:
        from kata.guest.netlink import translate

        del context
        if not request.HasField("routes"):
            raise InvalidArgumentError("UpdateRoutes: the request has no routes (send an empty list to clear)")
        routes = [translate.route_from_pb(r, f"Routes[{i}]") for i, r in enumerate(request.routes.Routes)]
        with self._lock:
            result = self._guest_network().update_routes(routes)
        return agent_pb2.Routes(Routes=[translate.route_to_pb(r) for r in result])

    @network_rpc("ListInterfaces")
    def list_interfaces(self, request: agent_pb2.ListInterfacesRequest,
                        context: CallContext) -> agent_pb2.Interfaces:
        from kata.guest.netlink import translate

        del request, context
        with self._lock:
            links = self._guest_network().interfaces()
        return agent_pb2.Interfaces(Interfaces=[translate.interface_to_pb(link) for link in links])

    @network_rpc("ListRoutes")
    def list_routes(self, request: agent_pb2.ListRoutesRequest, context: CallContext) -> agent_pb2.Routes:
        from kata.guest.netlink import translate

        del request, context
        with self._lock:
            routes = self._guest_network().routes()
        return agent_pb2.Routes(Routes=[translate.route_to_pb(r) for r in routes])

    @network_rpc("AddARPNeighbors")
    def add_arp_neighbors(self, request: agent_pb2.AddARPNeighborsRequest,
                          context: CallContext) -> empty_pb2.Empty:
        from kata.guest.netlink import translate

        del context
        if not request.HasField("neighbors"):
            raise InvalidArgumentError("AddARPNeighbors: the request has no neighbors")
        neighbours = [translate.neighbour_from_pb(n, f"ARPNeighbors[{i}]")
                      for i, n in enumerate(request.neighbors.ARPNeighbors)]
        with self._lock:
            self._guest_network().add_neighbours(neighbours)
        return EMPTY()

    def methods(self) -> dict[str, MethodSpec]:
        """The network part of the grpc.AgentService method table."""
        a = agent_pb2
        return {
            "UpdateInterface": (a.UpdateInterfaceRequest, types_pb2.Interface, self.update_interface),
            "UpdateRoutes": (a.UpdateRoutesRequest, a.Routes, self.update_routes),
            "ListInterfaces": (a.ListInterfacesRequest, a.Interfaces, self.list_interfaces),
            "ListRoutes": (a.ListRoutesRequest, a.Routes, self.list_routes),
            "AddARPNeighbors": (a.AddARPNeighborsRequest, EMPTY, self.add_arp_neighbors),
        }

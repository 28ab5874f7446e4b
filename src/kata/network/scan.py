"""What a network namespace holds for a sandbox: the interfaces to give the VM, their routes and static
neighbours, read over netlink and turned into the agent's types."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from kata.agent.types import ARPNeighbor, Interface, IPAddress, Route

__all__ = ["TAP_SUFFIX", "Endpoint", "NetworkInfo", "scan"]

TAP_SUFFIX = "_kata"
# Links we join to the VM by tc redirect (Kata's veth, macvlan and ipvlan endpoints).
ENDPOINT_KINDS = frozenset({"veth", "macvlan", "ipvlan"})
RT_TABLE_MAIN = 254
RTPROT_KERNEL = 2
RTNH_F_ONLINK = 4
NUD_PERMANENT = 0x80
IFF_NOARP = 0x80


@dataclass(frozen=True)
class Endpoint:
    """A link of the namespace to hand to the VM: its index and kind, and the guest interface it becomes."""

    index: int
    kind: str
    interface: Interface

    @property
    def name(self) -> str:
        """The link's name (the guest interface gets the same)."""
        return self.interface.name


@dataclass(frozen=True)
class NetworkInfo:
    """The namespace's endpoints with the routes and permanent neighbours that go through them."""

    endpoints: tuple[Endpoint, ...]
    routes: tuple[Route, ...]
    neighbors: tuple[ARPNeighbor, ...]


def _kind(link: Any) -> str:
    info = link.get_attr("IFLA_LINKINFO")
    return (info.get_attr("IFLA_INFO_KIND") or "") if info is not None else ""


def _addresses(ipr: Any, index: int) -> tuple[IPAddress, ...]:
    found = []
    for message in ipr.get_addr(index=index):
        text = message.get_attr("IFA_ADDRESS")
        if text is None or ipaddress.ip_address(text).is_link_local:
            continue  # the guest derives the same link-local address from the same MAC
        found.append(IPAddress(text, int(message["prefixlen"])))
    return tuple(found)


def _endpoints(ipr: Any) -> list[Endpoint]:
    endpoints = []
    for link in ipr.get_links():
        name = link.get_attr("IFLA_IFNAME")
        kind = _kind(link)
        if kind not in ENDPOINT_KINDS or name.endswith(TAP_SUFFIX):
            continue
        index = int(link["index"])
        interface = Interface(name=name, hw_addr=link.get_attr("IFLA_ADDRESS"), mtu=int(link.get_attr("IFLA_MTU")),
                              addresses=_addresses(ipr, index), raw_flags=int(link["flags"]) & IFF_NOARP)
        endpoints.append(Endpoint(index, kind, interface))
    return endpoints


def _route(message: Any, device: str) -> Route | None:
    if message.get_attr("RTA_TABLE", message["table"]) != RT_TABLE_MAIN or message["proto"] == RTPROT_KERNEL:
        return None
    family = 6 if message["family"] == socket.AF_INET6 else 4
    dst = message.get_attr("RTA_DST")
    if dst is not None and family == 6 and ipaddress.ip_address(dst).is_multicast:
        return None
    dest = f"{dst}/{message['dst_len']}" if dst is not None else ""
    return Route(dest=dest, gateway=message.get_attr("RTA_GATEWAY") or "", device=device,
                 source=message.get_attr("RTA_PREFSRC") or "", scope=int(message["scope"]), family=family,
                 flags=int(message["flags"]) & RTNH_F_ONLINK)


def scan(ipr: Any) -> NetworkInfo:
    """Read the namespace ``ipr`` (a pyroute2 IPRoute opened in it) is bound to."""
    endpoints = _endpoints(ipr)
    names = {e.index: e.name for e in endpoints}
    routes: list[Route] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for message in ipr.get_routes(family=family, table=RT_TABLE_MAIN):
            device = names.get(message.get_attr("RTA_OIF"))
            if device is not None and (route := _route(message, device)) is not None:
                routes.append(route)
    neighbors: list[ARPNeighbor] = []
    for message in ipr.get_neighbours():
        device = names.get(message["ifindex"])
        if device is not None and message["state"] & NUD_PERMANENT and message.get_attr("NDA_DST"):
            neighbors.append(ARPNeighbor(address=message.get_attr("NDA_DST"), device=device,
                                         lladdr=message.get_attr("NDA_LLADDR") or ""))
    return NetworkInfo(tuple(endpoints), tuple(routes), tuple(neighbors))

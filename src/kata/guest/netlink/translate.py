"""The one place where Kata's network messages (types_pb2) become model types and back.

Conventions, as Kata's runtimes send them: ``IPAddress.mask`` is the prefix length in decimal ("24";
an IPv4 netmask "255.255.255.0" is accepted too); the family follows from the address text (the
``family`` field is only read for routes that carry no address). ``Interface.hwAddr`` picks the link;
``name`` is what it is renamed to; ``device`` is ignored on input. ``Route.dest`` is a CIDR network
("10.0.0.0/24"), a bare address (a host route) or "" / "default"; ``source`` is the preferred source
address (an IPv6 "addr/len" shorter than 128 is a source-routing prefix); ``device`` names the link;
only the RTNH_F_ONLINK bit of ``flags`` is applied (the others are state the kernel sets).
``ARPNeighbor.state`` 0 means NUD_PERMANENT.
"""

from __future__ import annotations

from kata.guest.netlink.errors import NetworkRequestError
from kata.guest.netlink.model import (
    AF_INET,
    AF_INET6,
    IFF_NOARP,
    NUD_PERMANENT,
    RTNH_F_ONLINK,
    Address,
    Link,
    LinkConfig,
    Neighbour,
    Route,
    check_link_name,
    full_length,
    network_address,
    parse_ip,
    parse_mac,
    parse_prefix_length,
)
from kata.protocols.pb import types_pb2

__all__ = [
    "interface_from_pb",
    "interface_to_pb",
    "neighbour_from_pb",
    "route_from_pb",
    "route_to_pb",
]

PB_FAMILY = {AF_INET: types_pb2.v4, AF_INET6: types_pb2.v6}
MAX_MTU = 65535


def _address_from_pb(pb: types_pb2.IPAddress, what: str) -> Address:
    family, address = parse_ip(pb.address, f"{what}.address")
    return Address(family, address, parse_prefix_length(family, pb.mask, f"{what}.mask"))


def interface_from_pb(pb: types_pb2.Interface) -> LinkConfig:
    """What an UpdateInterface request asks for.

    Raises:
        NetworkRequestError: naming the field for a missing MAC, a bad name, address or MTU.
    """
    if not pb.hwAddr:
        raise NetworkRequestError("interface.hwAddr is empty: it is how the agent finds the link")
    if pb.mtu > MAX_MTU:
        raise NetworkRequestError(f"interface.mtu: {pb.mtu} is out of range")
    return LinkConfig(
        mac=parse_mac(pb.hwAddr, "interface.hwAddr"),
        name=check_link_name(pb.name, "interface.name"),
        mtu=pb.mtu,
        addresses=tuple(_address_from_pb(a, f"interface.IPAddresses[{i}]") for i, a in enumerate(pb.IPAddresses)),
        noarp=bool(pb.raw_flags & IFF_NOARP),
        device_path=pb.devicePath,
    )


def interface_to_pb(link: Link, *, device_path: str = "") -> types_pb2.Interface:
    """A link as Kata's agent answers it: ``device`` = ``name``, masks as prefix lengths, raw IFF_* flags."""
    return types_pb2.Interface(
        device=link.name, name=link.name, mtu=link.mtu, hwAddr=link.mac, devicePath=device_path,
        type=link.kind, raw_flags=link.flags,
        IPAddresses=[types_pb2.IPAddress(family=PB_FAMILY[a.family], address=a.address, mask=str(a.prefix_length))
                     for a in link.addresses],
    )


def _family_of(*found: int | None, declared: int) -> int:
    families = {family for family in found if family is not None}
    if len(families) > 1:
        raise NetworkRequestError("mixes IPv4 and IPv6 addresses")
    return families.pop() if families else (AF_INET6 if declared == types_pb2.v6 else AF_INET)


def _prefix(text: str, what: str) -> tuple[int, str, int] | None:
    """(family, address, length) of "addr/len" or a bare address (full length); None for ""/"default"."""
    if text in ("", "default"):
        return None
    address, slash, length = text.partition("/")
    family, address = parse_ip(address, what)
    return family, address, parse_prefix_length(family, length, what) if slash else full_length(family)


def route_from_pb(pb: types_pb2.Route, what: str) -> Route:
    """A route of an UpdateRoutes request (``what`` names it in errors, e.g. "Routes[2]").

    Raises:
        NetworkRequestError: naming the field for a bad address, a missing device or mixed families.
    """
    if not pb.device:
        raise NetworkRequestError(f"{what}.device is empty: routes name the link they go out of")
    dest = _prefix(pb.dest, f"{what}.dest")
    gateway = parse_ip(pb.gateway, f"{what}.gateway") if pb.gateway else None
    source = _prefix(pb.source, f"{what}.source")
    try:
        family = _family_of(dest and dest[0], gateway and gateway[0], source and source[0], declared=pb.family)
    except NetworkRequestError as exc:
        raise NetworkRequestError(f"{what} {exc}") from None
    dest_network, dest_length = (network_address(*dest), dest[2]) if dest is not None else ("", 0)
    preferred, source_prefix, source_length = "", "", 0
    if source is not None and source[2] == full_length(family):
        preferred = source[1]
    elif source is not None and family == AF_INET:
        raise NetworkRequestError(f"{what}.source: {pb.source!r}: IPv4 routes take a source address, not a prefix")
    elif source is not None:
        source_prefix, source_length = network_address(*source), source[2]
    return Route(family=family, dest=dest_network, dest_length=dest_length,
                 gateway=gateway[1] if gateway else "", device=pb.device, source=preferred,
                 source_prefix=source_prefix, source_prefix_length=source_length, scope=pb.scope,
                 flags=pb.flags & RTNH_F_ONLINK, mtu=pb.mtu)


def route_to_pb(route: Route) -> types_pb2.Route:
    """A route as listed: dest "net/len" ("" for the default route), source the preferred source."""
    source = route.source or (f"{route.source_prefix}/{route.source_prefix_length}" if route.source_prefix else "")
    return types_pb2.Route(
        dest=f"{route.dest}/{route.dest_length}" if route.dest else "", gateway=route.gateway,
        device=route.device, source=source, scope=route.scope, family=PB_FAMILY.get(route.family, types_pb2.v4),
        flags=route.flags, mtu=route.mtu,
    )


def neighbour_from_pb(pb: types_pb2.ARPNeighbor, what: str) -> Neighbour:
    """A neighbour of an AddARPNeighbors request (``what`` names it in errors).

    Raises:
        NetworkRequestError: naming the field for a missing or bad address, MAC or device.
    """
    if not pb.HasField("toIPAddress") or not pb.toIPAddress.address:
        raise NetworkRequestError(f"{what}.toIPAddress is empty")
    if not pb.device:
        raise NetworkRequestError(f"{what}.device is empty")
    family, address = parse_ip(pb.toIPAddress.address, f"{what}.toIPAddress.address")
    if not 0 <= pb.state <= 0xFFFF or not 0 <= pb.flags <= 0xFF:
        raise NetworkRequestError(f"{what}: state {pb.state} or flags {pb.flags} out of range")
    return Neighbour(family=family, address=address, device=pb.device,
                     lladdr=parse_mac(pb.lladdr, f"{what}.lladdr") if pb.lladdr else "",
                     state=pb.state or NUD_PERMANENT, flags=pb.flags)

"""What the guest network layer works with: links, addresses, routes, neighbours, and their parsers.

Plain data and the standard library only: no netlink, no protobuf. Address families are the
``socket.AF_INET``/``AF_INET6`` numbers, addresses their canonical text (``inet_ntop``), MACs lower case.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from kata.guest.netlink.errors import NetworkRequestError

__all__ = [
    "AF_INET",
    "AF_INET6",
    "IFF_LOOPBACK",
    "IFF_NOARP",
    "IFF_UP",
    "MAX_NAME_LENGTH",
    "NUD_PERMANENT",
    "RTNH_F_ONLINK",
    "RT_TABLE_MAIN",
    "Address",
    "Link",
    "LinkConfig",
    "Neighbour",
    "Route",
    "check_link_name",
    "full_length",
    "network_address",
    "parse_ip",
    "parse_mac",
    "parse_prefix_length",
]

AF_INET = int(socket.AF_INET)
AF_INET6 = int(socket.AF_INET6)
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_NOARP = 0x80
NUD_PERMANENT = 0x80
RTNH_F_ONLINK = 0x4
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
MAX_NAME_LENGTH = 15  # IFNAMSIZ - 1


@dataclass(frozen=True)
class Address:
    """An interface address: family, canonical text, prefix length."""

    family: int
    address: str
    prefix_length: int


@dataclass(frozen=True)
class Link:
    """A network link as the kernel reports it; ``kind`` is IFLA_INFO_KIND ("veth", "" for plain NICs)."""

    index: int
    name: str
    mac: str
    mtu: int
    flags: int
    kind: str = ""
    addresses: tuple[Address, ...] = ()

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


@dataclass(frozen=True)
class LinkConfig:
    """What UpdateInterface asks of the link with MAC ``mac``: name ("" keeps it), MTU (0 keeps it),
    exactly these addresses, ARP on or off; ``device_path`` set means the NIC may still be arriving."""

    mac: str
    name: str = ""
    mtu: int = 0
    addresses: tuple[Address, ...] = ()
    noarp: bool = False
    device_path: str = ""


@dataclass(frozen=True)
class Route:
    """A route of the main table.

    ``dest``/``dest_length`` is the destination network ("" and 0: default); ``source`` the preferred
    source address (RTA_PREFSRC); ``source_prefix``/``source_prefix_length`` a source-routing prefix
    (RTA_SRC, IPv6). The fields after ``mtu`` are the kernel's bookkeeping, read when listing and used
    to delete exactly the route listed.
    """

    family: int
    dest: str = ""
    dest_length: int = 0
    gateway: str = ""
    device: str = ""
    source: str = ""
    source_prefix: str = ""
    source_prefix_length: int = 0
    scope: int = 0
    flags: int = 0
    mtu: int = 0
    index: int = field(default=0, compare=False)
    protocol: int = field(default=0, compare=False)
    table: int = field(default=RT_TABLE_MAIN, compare=False)
    kind: int = field(default=RTN_UNICAST, compare=False)
    priority: int = field(default=0, compare=False)
    tos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Neighbour:
    """A neighbour (ARP/NDP) entry: IP address on link ``device``, link-layer address, NUD state, flags."""

    family: int
    address: str
    device: str
    lladdr: str = ""
    state: int = NUD_PERMANENT
    flags: int = 0


def full_length(family: int) -> int:
    """32 for IPv4, 128 for IPv6."""
    return 32 if family == AF_INET else 128


def parse_ip(text: str, what: str) -> tuple[int, str]:
    """(family, canonical text) of an IPv4 or IPv6 address.

    Raises:
        NetworkRequestError: naming ``what`` when ``text`` is not an address.
    """
    for family in (AF_INET, AF_INET6):
        try:
            return family, socket.inet_ntop(family, socket.inet_pton(family, text))
        except (OSError, ValueError):
            continue
    raise NetworkRequestError(f"{what}: {text!r} is not an IPv4 or IPv6 address")


def parse_prefix_length(family: int, text: str, what: str) -> int:
    """A prefix length given as a decimal number ("24") or, for IPv4, a netmask ("255.255.255.0").

    Raises:
        NetworkRequestError: naming ``what`` for anything else, or a length beyond the family's.
    """
    limit = full_length(family)
    if text.isdigit() and int(text) <= limit:
        return int(text)
    if family == AF_INET and text.count(".") == 3:
        try:
            bits = int.from_bytes(socket.inet_pton(AF_INET, text), "big")
        except OSError:
            bits = -1
        length = bin(bits).count("1") if bits >= 0 else -1
        if length >= 0 and bits == ((1 << 32) - 1) ^ ((1 << (32 - length)) - 1):
            return length
    raise NetworkRequestError(f"{what}: {text!r} is not a prefix length (0-{limit}) for this address")


def network_address(family: int, address: str, length: int) -> str:
    """``address`` with the bits beyond the prefix cleared (the kernel refuses host bits in routes)."""
    width = full_length(family)
    value = int.from_bytes(socket.inet_pton(family, address), "big")
    value &= ((1 << width) - 1) ^ ((1 << (width - length)) - 1)
    return socket.inet_ntop(family, value.to_bytes(width // 8, "big"))


def parse_mac(text: str, what: str) -> str:
    """A MAC address ("02:AB:..." or "02-ab-...") in lower-case colon form.

    Raises:
        NetworkRequestError: naming ``what`` when ``text`` is not six hex octets.
    """
    octets = text.replace("-", ":").split(":")
    if len(octets) == 6 and all(1 <= len(o) <= 2 and all(c in "0123456789abcdefABCDEF" for c in o)
                                for o in octets):
        return ":".join(f"{int(o, 16):02x}" for o in octets)
    raise NetworkRequestError(f"{what}: {text!r} is not a MAC address")


def check_link_name(name: str, what: str) -> str:
    """``name`` if the kernel can take it as a link name.

    Raises:
        NetworkRequestError: naming ``what`` for an over-long name or one with '/', ':' or blanks.
    """
    if len(name) > MAX_NAME_LENGTH or name in (".", "..") or any(c in "/: \t\n" for c in name):
        raise NetworkRequestError(f"{what}: {name!r} is not a valid link name (at most "
                                  f"{MAX_NAME_LENGTH} characters, no '/', ':' or blanks)")
    return name

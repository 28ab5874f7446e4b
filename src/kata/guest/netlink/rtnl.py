"""Blocking rtnetlink on pyroute2's message classes: links, addresses, routes and neighbours as model types.

The only module that touches pyroute2. It imports pyroute2's rtnetlink messages (ifinfmsg, ifaddrmsg,
rtmsg, ndmsg) and its marshal without running ``pyroute2/__init__.py``: that file imports every
pyroute2 feature, asyncio and multiprocessing's friends included (~370 modules, 0.3 s on a host and
seconds in a TCG guest), where the message classes need ~40 modules (~20 ms on a host). Socket I/O is
a plain blocking ``AF_NETLINK`` socket, so nothing here needs asyncio either.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import socket
import sys
import types
from dataclasses import replace
from typing import Any

from kata.guest.netlink.errors import NetlinkError
from kata.guest.netlink.model import (
    AF_INET,
    AF_INET6,
    IFF_NOARP,
    IFF_UP,
    RT_TABLE_MAIN,
    Address,
    Link,
    Neighbour,
    Route,
)

__all__ = ["RouteSocket", "describe_route", "import_pyroute2"]

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11  # the kernel then says why it refused a request ("Nexthop has invalid gateway")
RECV_SIZE = 1 << 18
IFA_F_NODAD = 0x02
RTPROT_BOOT = 3
RTN_UNICAST = 1


def import_pyroute2(name: str) -> Any:
    """Import pyroute2 submodule ``name`` without running ``pyroute2/__init__.py`` (see the module doc).

    When pyroute2 is already imported in full (a test process), that package is used as it is.

    Raises:
        ImportError: when pyroute2 is not installed.
    """
    if "pyroute2" not in sys.modules:
        spec = importlib.machinery.PathFinder.find_spec("pyroute2", sys.path)
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError("pyroute2 is not installed", name="pyroute2")
        package = types.ModuleType("pyroute2", "pyroute2's submodules, without its heavy __init__")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        package.__file__ = spec.origin
        sys.modules["pyroute2"] = package
    return importlib.import_module(name)


_netlink = import_pyroute2("pyroute2.netlink")
_rtnl = import_pyroute2("pyroute2.netlink.rtnl")
_ifinfmsg = import_pyroute2("pyroute2.netlink.rtnl.ifinfmsg").ifinfmsg
_ifaddrmsg = import_pyroute2("pyroute2.netlink.rtnl.ifaddrmsg").ifaddrmsg
_rtmsg = import_pyroute2("pyroute2.netlink.rtnl.rtmsg").rtmsg
_ndmsg = import_pyroute2("pyroute2.netlink.rtnl.ndmsg").ndmsg
_Marshal = import_pyroute2("pyroute2.netlink.marshal").Marshal
_PyrouteNetlinkError = import_pyroute2("pyroute2.netlink.exceptions").NetlinkError

NLM_F_REQUEST = _netlink.NLM_F_REQUEST
NLM_F_ACK = _netlink.NLM_F_ACK
NLM_F_DUMP = _netlink.NLM_F_DUMP
NLM_F_CREATE = _netlink.NLM_F_CREATE
NLM_F_EXCL = _netlink.NLM_F_EXCL
NLM_F_REPLACE = _netlink.NLM_F_REPLACE
NLMSG_ERROR = _netlink.NLMSG_ERROR
NLMSG_DONE = _netlink.NLMSG_DONE
# The answers this module asks for, by message type (the marshal decodes the rest as bare nlmsg).
ANSWERS = {_rtnl.RTM_NEWLINK: _ifinfmsg, _rtnl.RTM_NEWADDR: _ifaddrmsg, _rtnl.RTM_NEWROUTE: _rtmsg,
           _rtnl.RTM_NEWNEIGH: _ndmsg}


def _attr(message: Any, name: str, default: Any = None) -> Any:
    value = message.get_attr(name)
    return default if value is None else value


class RouteSocket:
    """One NETLINK_ROUTE socket; requests are sent and answered one at a time (callers serialise).

    Every method raises NetlinkError (carrying the kernel's errno and reason) when the kernel refuses.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            self._sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self._sock.bind((0, 0))
        except BaseException:
            self._sock.close()
            raise
        self._sequence = 0
        self._marshal = _Marshal()
        self._marshal.msg_map = dict(ANSWERS)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RouteSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(self, message: Any, kind: int, flags: int, what: str) -> list[Any]:
        """Send ``message`` as ``kind``; the answers until the ACK (or the end of a dump)."""
        self._sequence += 1
        header = message["header"]
        header["type"], header["flags"] = kind, flags | NLM_F_REQUEST | NLM_F_ACK
        header["sequence_number"], header["pid"] = self._sequence, 0
        message.encode()
        try:
            self._sock.send(message.data)
            answers: list[Any] = []
            while True:
                for answer in self._marshal.parse(self._sock.recv(RECV_SIZE)):
                    if answer["header"]["sequence_number"] != self._sequence:
                        continue  # a late answer to an earlier request that failed half-way
                    error = answer["header"]["error"]
                    if isinstance(error, (_PyrouteNetlinkError, OSError)):
                        raise error  # the kernel refused; a decoding problem only leaves attributes out
                    if answer["header"]["type"] in (NLMSG_DONE, NLMSG_ERROR):
                        return answers
                    answers.append(answer)
        except _PyrouteNetlinkError as exc:
            reason = exc.args[1] if len(exc.args) > 1 and exc.args[1] else ""
            raise NetlinkError(what, exc.code, str(reason)) from exc
        except OSError as exc:
            raise NetlinkError(what, exc.errno or 0, exc.strerror or "") from exc

    def _dump(self, message: Any, kind: int, what: str) -> list[Any]:
        return self._request(message, kind, NLM_F_DUMP, what)

    # links

    def links(self) -> list[Link]:
        """Every link, with no addresses filled in."""
        return [self._link(m) for m in self._dump(_ifinfmsg(), _rtnl.RTM_GETLINK, "list links")]

    @staticmethod
    def _link(message: Any) -> Link:
        kind = message.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or ""
        return Link(index=message["index"], name=_attr(message, "IFLA_IFNAME", ""),
                    mac=_attr(message, "IFLA_ADDRESS", "").lower(), mtu=_attr(message, "IFLA_MTU", 0),
                    flags=message["flags"], kind=kind)

    def set_link(self, index: int, *, name: str = "", mtu: int = 0, up: bool | None = None,
                 noarp: bool | None = None) -> None:
        """Rename the link, set its MTU, bring it up or down, turn ARP off or on (in one request)."""
        message = _ifinfmsg()
        message["index"] = index
        change = flags = 0
        if up is not None:
            change |= IFF_UP
            flags |= IFF_UP if up else 0
        if noarp is not None:
            change |= IFF_NOARP
            flags |= IFF_NOARP if noarp else 0
        message["flags"], message["change"] = flags, change
        attrs: list[list[Any]] = []
        if name:
            attrs.append(["IFLA_IFNAME", name])
        if mtu:
            attrs.append(["IFLA_MTU", mtu])
        message["attrs"] = attrs
        self._request(message, _rtnl.RTM_NEWLINK, 0, f"set link {index}")

    # addresses

    def addresses(self) -> list[tuple[int, Address]]:
        """(link index, address) of every address of every link."""
        found = []
        for message in self._dump(_ifaddrmsg(), _rtnl.RTM_GETADDR, "list addresses"):
            text = _attr(message, "IFA_LOCAL") or _attr(message, "IFA_ADDRESS")
            if message["family"] in (AF_INET, AF_INET6) and text:
                found.append((message["index"], Address(message["family"], text, message["prefixlen"])))
        return found

    def _address_message(self, index: int, address: Address) -> Any:
        message = _ifaddrmsg()
        message["family"], message["prefixlen"], message["index"] = (
            address.family, address.prefix_length, index)
        return message

    def add_address(self, index: int, address: Address) -> None:
        """Add ``address`` to the link; IPv6 ones skip duplicate address detection (usable at once)."""
        message = self._address_message(index, address)
        attrs = [["IFA_ADDRESS", address.address]]
        if address.family == AF_INET:
            attrs.append(["IFA_LOCAL", address.address])
            if address.prefix_length < 31:  # as `ip addr add ... brd +` and Kata's agents do
                attrs.append(["IFA_BROADCAST", _broadcast(address)])
        else:
            message["flags"] = IFA_F_NODAD
        message["attrs"] = attrs
        self._request(message, _rtnl.RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
                      f"add address {address.address}/{address.prefix_length}")

    def delete_address(self, index: int, address: Address) -> None:
        message = self._address_message(index, address)
        message["attrs"] = [["IFA_LOCAL" if address.family == AF_INET else "IFA_ADDRESS", address.address]]
        self._request(message, _rtnl.RTM_DELADDR, 0, f"delete address {address.address}/{address.prefix_length}")

    # routes

    def routes(self, names: dict[int, str]) -> list[Route]:
        """The main table's routes, both families; ``names`` maps link indexes to names."""
        found = []
        for family in (AF_INET, AF_INET6):
            request = _rtmsg()
            request["family"] = family
            for message in self._dump(request, _rtnl.RTM_GETROUTE, "list routes"):
                route = self._route(message, names)
                if route.table == RT_TABLE_MAIN:
                    found.append(route)
        return found

    @staticmethod
    def _route(message: Any, names: dict[int, str]) -> Route:
        index = _attr(message, "RTA_OIF", 0)
        metrics = message.get_attr("RTA_METRICS")
        mtu = metrics.get_attr("RTAX_MTU") if metrics is not None else None
        source_prefix = _attr(message, "RTA_SRC", "") if message["src_len"] else ""
        return Route(
            family=message["family"], dest=_attr(message, "RTA_DST", ""), dest_length=message["dst_len"],
            gateway=_attr(message, "RTA_GATEWAY", ""), device=names.get(index, ""),
            source=_attr(message, "RTA_PREFSRC", ""), source_prefix=source_prefix,
            source_prefix_length=message["src_len"] if source_prefix else 0, scope=message["scope"],
            flags=message["flags"], mtu=mtu or 0, index=index, protocol=message["proto"],
            table=_attr(message, "RTA_TABLE", message["table"]), kind=message["type"],
            priority=_attr(message, "RTA_PRIORITY", 0), tos=message["tos"])

    def _route_message(self, route: Route) -> Any:
        message = _rtmsg()
        message["family"], message["dst_len"], message["src_len"] = (
            route.family, route.dest_length, route.source_prefix_length)
        message["tos"], message["table"], message["proto"] = route.tos, RT_TABLE_MAIN, route.protocol
        message["scope"], message["type"], message["flags"] = route.scope, route.kind, route.flags
        attrs: list[list[Any]] = [["RTA_TABLE", route.table]]
        for name, value in (("RTA_DST", route.dest), ("RTA_GATEWAY", route.gateway),
                            ("RTA_PREFSRC", route.source), ("RTA_SRC", route.source_prefix)):
            if value:
                attrs.append([name, value])
        if route.index:
            attrs.append(["RTA_OIF", route.index])
        if route.priority:
            attrs.append(["RTA_PRIORITY", route.priority])
        if route.mtu:
            attrs.append(["RTA_METRICS", {"attrs": [["RTAX_MTU", route.mtu]]}])
        message["attrs"] = attrs
        return message

    def add_route(self, route: Route) -> None:
        """Add ``route`` (a static, unicast, main-table route on link ``route.index``)."""
        route = replace(route, protocol=RTPROT_BOOT, kind=RTN_UNICAST, table=RT_TABLE_MAIN)
        self._request(self._route_message(route), _rtnl.RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL,
                      f"add route {describe_route(route)}")

    def delete_route(self, route: Route) -> None:
        """Delete the route as it was listed."""
        self._request(self._route_message(route), _rtnl.RTM_DELROUTE, 0, f"delete route {describe_route(route)}")

    # neighbours

    def set_neighbour(self, neighbour: Neighbour, index: int) -> None:
        """Add or replace the neighbour entry on link ``index``."""
        message = _ndmsg()
        message["family"], message["ifindex"] = neighbour.family, index
        message["state"], message["flags"] = neighbour.state, neighbour.flags
        attrs = [["NDA_DST", neighbour.address]]
        if neighbour.lladdr:
            attrs.append(["NDA_LLADDR", neighbour.lladdr])
        message["attrs"] = attrs
        self._request(message, _rtnl.RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE,
                      f"add neighbour {neighbour.address} on {neighbour.device}")

    def neighbours(self, names: dict[int, str]) -> list[Neighbour]:
        """Every IPv4/IPv6 neighbour entry; ``names`` maps link indexes to names."""
        found = []
        for message in self._dump(_ndmsg(), _rtnl.RTM_GETNEIGH, "list neighbours"):
            address = _attr(message, "NDA_DST", "")
            if message["family"] in (AF_INET, AF_INET6) and address:
                found.append(Neighbour(family=message["family"], address=address,
                                       device=names.get(message["ifindex"], ""),
                                       lladdr=_attr(message, "NDA_LLADDR", "").lower(),
                                       state=message["state"], flags=message["flags"]))
        return found


def _broadcast(address: Address) -> str:
    value = int.from_bytes(socket.inet_pton(AF_INET, address.address), "big")
    value |= (1 << (32 - address.prefix_length)) - 1
    return socket.inet_ntop(AF_INET, value.to_bytes(4, "big"))


def describe_route(route: Route) -> str:
    """``ip route``-like text naming a route in messages."""
    parts = [f"{route.dest}/{route.dest_length}" if route.dest else "default"]
    if route.gateway:
        parts.append(f"via {route.gateway}")
    if route.device:
        parts.append(f"dev {route.device}")
    return " ".join(parts)

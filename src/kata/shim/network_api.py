"""What the shim-monitor's network endpoints need of a sandbox, and the JSON they answer: interfaces and
routes with the field names of the agent protocol (``types.proto``), as Kata's ``kata-network`` printed
them (Go's encoding/json of the agent types: empty fields left out, the IP family a number)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Protocol

from kata.agent.types import Interface, IPAddress, Route

__all__ = ["NetworkTarget", "interface_json", "interfaces_body", "route_json", "routes_body"]

IP_FAMILY_V4 = 0  # types.proto IPFamily
IP_FAMILY_V6 = 1


class NetworkTarget(Protocol):
    """The sandbox a shim serves, as the network endpoints use it (the shim's ShimMonitor over an
    AsyncSandbox; tests use a fake)."""

    async def add_interface(self, name: str) -> Interface:
        """Wire the link ``name`` of the sandbox's network namespace to the VM; the guest's interface.

        Raises:
            StateError: the sandbox cannot hotplug now.
            NetworkError: no such link, or it is wired already.
        """

    async def remove_interface(self, name: str) -> None:
        """Unplug what :meth:`add_interface` added.

        Raises:
            NetworkError: ``name`` was not added.
        """

    async def list_interfaces(self) -> tuple[Interface, ...]:
        """The guest's interfaces."""

    async def list_routes(self) -> tuple[Route, ...]:
        """The guest's main routing table."""

    async def get_iptables(self, *, ipv6: bool) -> bytes:
        """The guest's iptables-save (ip6tables-save) output.

        Raises:
            RpcError: the agent refused (UNIMPLEMENTED when the guest has no iptables).
        """

    async def set_iptables(self, data: bytes, *, ipv6: bool) -> None:
        """Feed ``data`` to the guest's iptables-restore (ip6tables-restore).

        Raises:
            RpcError: the agent refused (UNIMPLEMENTED when the guest has no iptables).
        """


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    """Go's ``omitempty``: zero numbers, empty strings and lists are left out."""
    return {key: value for key, value in fields.items() if value not in ("", 0, [], None)}


def _family(text: str) -> int:
    return IP_FAMILY_V6 if ":" in text else IP_FAMILY_V4


def _address_json(address: IPAddress) -> dict[str, Any]:
    mask = "" if address.prefix_length is None else str(address.prefix_length)
    return _present({"family": _family(address.address), "address": address.address, "mask": mask})


def interface_json(interface: Interface) -> dict[str, Any]:
    """An interface as a JSON object: ``device``, ``name``, ``IPAddresses`` (``family``, ``address``,
    ``mask``), ``mtu``, ``hwAddr``, ``devicePath``, ``type``, ``raw_flags``."""
    return _present({"device": interface.name, "name": interface.name,
                     "IPAddresses": [_address_json(a) for a in interface.addresses], "mtu": interface.mtu,
                     "hwAddr": interface.hw_addr, "devicePath": interface.device_path, "type": interface.link_type,
                     "raw_flags": interface.raw_flags})


def route_json(route: Route) -> dict[str, Any]:
    """A route as a JSON object: ``dest``, ``gateway``, ``device``, ``source``, ``scope``, ``family``,
    ``flags``, ``mtu``."""
    family = IP_FAMILY_V6 if route.family == 6 else IP_FAMILY_V4
    return _present({"dest": route.dest, "gateway": route.gateway, "device": route.device, "source": route.source,
                     "scope": route.scope, "family": family, "flags": route.flags, "mtu": route.mtu})


def interfaces_body(interfaces: Iterable[Interface]) -> bytes:
    """The JSON list of ``interfaces`` (one line, as Go's json.Encoder writes it)."""
    return (json.dumps([interface_json(i) for i in interfaces], separators=(",", ":")) + "\n").encode()


def routes_body(routes: Iterable[Route]) -> bytes:
    """The JSON list of ``routes`` (one line)."""
    return (json.dumps([route_json(r) for r in routes], separators=(",", ":")) + "\n").encode()

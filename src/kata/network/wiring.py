"""Wire a network namespace's interfaces to a VM (Kata's ``tcfilter`` model) and undo it exactly.

For every endpoint (veth, macvlan, ipvlan) of the namespace a tap ``tap<N>_kata`` is created next to it;
both get an ingress qdisc whose match-all u32 filter redirects every frame to the other one (tc mirred).
The VMM gets the tap's fd and a virtio-net NIC with the endpoint's MAC and MTU; the guest interface is
then given the endpoint's name, addresses, routes and permanent neighbours (:func:`configure_guest`).
:func:`unwire` leaves the namespace as it was: the qdiscs (and their filters) and taps go; a namespace
made for the sandbox is removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kata.agent import AgentClient
from kata.errors import NetworkError
from kata.hypervisor.devices import NetDevice
from kata.log import fields
from kata.network.netns import create_netns, remove_netns
from kata.network.scan import TAP_SUFFIX, NetworkInfo, scan
from kata.network.tap import has_ingress, open_tap, redirect, remove_ingress

__all__ = ["MODELS", "EndpointRecord", "NetworkRecord", "WiredNetwork", "configure_guest", "unwire", "wire"]

_log = logging.getLogger("kata.network")
MODELS = ("tcfilter", "none")


@dataclass(frozen=True)
class EndpointRecord:
    """One wired endpoint as state.json keeps it: the endpoint link and its tap, by name, and the link's
    transmit queue length (the kernel sets 1000 on a 0-length link that gets an ingress qdisc)."""

    name: str
    tap: str
    txqlen: int = -1


@dataclass(frozen=True)
class NetworkRecord:
    """What was done to a namespace, so that any process can undo it."""

    netns: str
    model: str = "tcfilter"
    created_netns: bool = False
    endpoints: tuple[EndpointRecord, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object."""
        return {"netns": self.netns, "model": self.model, "created_netns": self.created_netns,
                "endpoints": [{"name": e.name, "tap": e.tap, "txqlen": e.txqlen} for e in self.endpoints]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NetworkRecord:
        """The record of a JSON object (see :meth:`to_json`).

        Raises:
            KeyError, TypeError, ValueError: a field is missing or of the wrong type.
        """
        return cls(netns=str(data["netns"]), model=str(data.get("model", "tcfilter")),
                   created_netns=bool(data.get("created_netns", False)),
                   endpoints=tuple(EndpointRecord(str(e["name"]), str(e["tap"]), int(e.get("txqlen", -1)))
                                  for e in data.get("endpoints", ())))


@dataclass
class WiredNetwork:
    """A wired namespace: its record, the NICs for the VMM (holding open tap fds) and the guest's view."""

    record: NetworkRecord
    devices: tuple[NetDevice, ...] = ()
    info: NetworkInfo = field(default_factory=lambda: NetworkInfo((), (), ()))

    def close_fds(self) -> None:
        """Close our copies of the tap fds (once the VMM holds its own, or when it never will)."""
        for device in self.devices:
            for fd in device.tap_fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.devices = tuple(NetDevice(d.id, d.mac, tap_name=d.tap_name or "closed", mtu=d.mtu) for d in self.devices)


def _iproute(netns: str) -> Any:
    from pyroute2 import IPRoute  # type: ignore[import-untyped]

    try:
        return IPRoute(netns=netns)
    except OSError as exc:
        raise NetworkError(f"open network namespace {netns}: {exc.strerror or exc}") from exc


def wire(netns: str | None, *, model: str = "tcfilter", sandbox_id: str = "", new_netns: bool = True) -> WiredNetwork:
    """Wire the namespace at ``netns`` for a VM; ``""`` makes a new (empty) one named after the sandbox
    unless ``new_netns`` is false. Blocking (netlink): call it in a thread. On failure nothing is left.

    Raises:
        NetworkError: unknown model, a namespace that cannot be read, an endpoint that already has an
            ingress qdisc, or a tap or filter that cannot be made.
    """
    if model not in MODELS:
        raise NetworkError(f"internetworking model {model!r} is not supported (use one of {', '.join(MODELS)})")
    created = False
    if netns == "" and new_netns:
        netns, created = create_netns(f"kata-{sandbox_id[:40] or os.getpid()}"), True
    if not netns or model == "none":
        return WiredNetwork(NetworkRecord(netns or "", model, created))
    record = NetworkRecord(netns, model, created)
    wired = WiredNetwork(record)
    try:
        with _iproute(netns) as ipr:
            wired.info = info = scan(ipr)
            for number, endpoint in enumerate(info.endpoints):
                if has_ingress(ipr, endpoint.index):
                    raise NetworkError(f"{endpoint.name} in {netns} already has an ingress qdisc: not wiring it")
                tap = f"tap{number}{TAP_SUFFIX}"
                fd = open_tap(netns, tap)
                wired.devices += (NetDevice(f"net{number}", endpoint.interface.hw_addr, tap_fds=(fd,),
                                            mtu=endpoint.interface.mtu),)
                txqlen = int(ipr.get_links(endpoint.index)[0].get_attr("IFLA_TXQLEN"))
                wired.record = record = NetworkRecord(
                    netns, model, created, (*record.endpoints, EndpointRecord(endpoint.name, tap, txqlen)))
                tap_index = ipr.link_lookup(ifname=tap)[0]
                ipr.link("set", index=tap_index, mtu=endpoint.interface.mtu, state="up")
                redirect(ipr, endpoint.index, tap_index)
                redirect(ipr, tap_index, endpoint.index)
    except BaseException as exc:
        wired.close_fds()
        with contextlib.suppress(NetworkError):
            unwire(wired.record)
        if isinstance(exc, OSError) and not isinstance(exc, NetworkError):
            raise NetworkError(f"wire {netns}: {exc.strerror or exc}") from exc
        raise
    _log.info("network wired", extra=fields(sandbox=sandbox_id, netns=netns,
                                            endpoints=[e.name for e in record.endpoints]))
    return wired


def unwire(record: NetworkRecord) -> None:
    """Undo :func:`wire`: ingress qdiscs off the endpoints, taps deleted, our namespace removed. Idempotent;
    a namespace that is gone already (its engine removed it) has nothing left to undo.

    Raises:
        NetworkError: something could not be removed.
    """
    if record.endpoints and os.path.exists(record.netns):
        with _iproute(record.netns) as ipr:
            for endpoint in record.endpoints:
                try:
                    for index in ipr.link_lookup(ifname=endpoint.name):
                        remove_ingress(ipr, index)
                        if endpoint.txqlen >= 0:
                            ipr.link("set", index=index, txqlen=endpoint.txqlen)
                    for index in ipr.link_lookup(ifname=endpoint.tap):
                        ipr.link("del", index=index)
                except OSError as exc:
                    raise NetworkError(f"unwire {endpoint.name} in {record.netns}: {exc.strerror or exc}") from exc
    if record.created_netns:
        remove_netns(record.netns)


async def configure_guest(agent: AgentClient, info: NetworkInfo) -> None:
    """Give the guest the endpoints' interfaces (found by MAC), then the routes and static neighbours.

    Raises:
        RpcError: the agent refused one of them.
    """
    for endpoint in info.endpoints:
        await agent.update_interface(endpoint.interface)
    if info.endpoints:
        await agent.update_routes(info.routes)
    if info.neighbors:
        await agent.add_arp_neighbors(info.neighbors)

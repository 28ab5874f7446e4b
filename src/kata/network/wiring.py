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
from dataclasses import dataclass, field, replace
from typing import Any

from kata.agent import AgentClient
from kata.agent.types import ARPNeighbor, Interface, Route
from kata.errors import NetworkError
from kata.hypervisor.devices import NetDevice
from kata.log import fields
from kata.network.netns import create_netns, remove_netns
from kata.network.scan import TAP_SUFFIX, Endpoint, NetworkInfo, scan
from kata.network.tap import has_ingress, open_macvtap, open_tap, redirect, remove_ingress

__all__ = ["MODELS", "AddedEndpoint", "EndpointRecord", "NetworkRecord", "WiredNetwork", "configure_guest", "unwire",
           "unwire_endpoint", "wire", "wire_endpoint"]

_log = logging.getLogger("kata.network")
MODELS = ("tcfilter", "macvtap", "none")


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

    if not os.path.exists(netns):  # pyroute2 would create it
        raise NetworkError(f"open network namespace {netns}: it does not exist")
    try:
        return IPRoute(netns=netns, flags=os.O_RDONLY)
    except OSError as exc:
        raise NetworkError(f"open network namespace {netns}: {exc.strerror or exc}") from exc


def _wire_endpoint(ipr: Any, netns: str, endpoint: Endpoint, tap: str, number: int, *, model: str,
                   ) -> tuple[EndpointRecord, NetDevice]:
    """``tcfilter``: tap + redirects both ways (checked by :func:`_refuse_taken` first); ``macvtap``: a
    passthru macvtap on the endpoint. The fd comes back in the NetDevice; on failure the fd is closed and
    the links and redirects made are left for :func:`unwire`."""
    if model == "macvtap":
        fd = open_macvtap(ipr, endpoint.index, tap, endpoint.interface.mtu)
        device = NetDevice(f"net{number}", endpoint.interface.hw_addr, tap_fds=(fd,), mtu=endpoint.interface.mtu)
        return EndpointRecord(endpoint.name, tap), device
    txqlen = int(ipr.get_links(endpoint.index)[0].get_attr("IFLA_TXQLEN"))
    fd = open_tap(netns, tap)
    try:
        tap_index = ipr.link_lookup(ifname=tap)[0]
        ipr.link("set", index=tap_index, mtu=endpoint.interface.mtu, state="up")
        redirect(ipr, endpoint.index, tap_index)
        redirect(ipr, tap_index, endpoint.index)
    except BaseException:
        os.close(fd)
        raise
    device = NetDevice(f"net{number}", endpoint.interface.hw_addr, tap_fds=(fd,), mtu=endpoint.interface.mtu)
    return EndpointRecord(endpoint.name, tap, txqlen), device


def _refuse_taken(ipr: Any, netns: str, endpoint: Endpoint) -> None:
    """Raise before anything is changed when the endpoint's ingress is someone else's."""
    if has_ingress(ipr, endpoint.index):
        raise NetworkError(f"{endpoint.name} in {netns} already has an ingress qdisc: not wiring it")


def _wrap(exc: BaseException, what: str) -> BaseException:
    if isinstance(exc, OSError):
        return NetworkError(f"{what}: {exc.strerror or exc}")
    return exc


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
    if not netns or model == "none" or created:
        # A namespace made just now holds only its loopback: nothing to scan (a later endpoint is hotplugged).
        return WiredNetwork(NetworkRecord(netns or "", model, created))
    wired = WiredNetwork(NetworkRecord(netns, model, created))
    try:
        with _iproute(netns) as ipr:
            wired.info = info = scan(ipr)
            for number, endpoint in enumerate(info.endpoints):
                tap = f"tap{number}{TAP_SUFFIX}"
                if model == "tcfilter":
                    _refuse_taken(ipr, netns, endpoint)
                done = wired.record.endpoints  # a half-wired endpoint is in the record, for the rollback
                wired.record = replace(wired.record, endpoints=(*done, EndpointRecord(endpoint.name, tap)))
                endpoint_record, device = _wire_endpoint(ipr, netns, endpoint, tap, number, model=model)
                wired.record = replace(wired.record, endpoints=(*done, endpoint_record))
                wired.devices += (device,)
    except BaseException as exc:
        wired.close_fds()
        with contextlib.suppress(NetworkError):
            unwire(wired.record)
        wrapped = _wrap(exc, f"wire {netns}")
        if wrapped is exc:
            raise
        raise wrapped from exc
    _log.info("network wired", extra=fields(sandbox=sandbox_id, netns=netns,
                                            endpoints=[e.name for e in wired.record.endpoints]))
    return wired


@dataclass(frozen=True)
class AddedEndpoint:
    """An endpoint wired on a running sandbox: its record, the NIC to hotplug, and the guest's new view."""

    record: EndpointRecord
    device: NetDevice
    interface: Interface
    routes: tuple[Route, ...]  # every wired endpoint's routes, this one's included (UpdateRoutes is declarative)
    neighbors: tuple[ARPNeighbor, ...]


def wire_endpoint(record: NetworkRecord, name: str) -> AddedEndpoint:
    """Wire the link ``name`` of the already wired namespace ``record`` describes (interface hotplug).
    Blocking. On failure nothing is left.

    Raises:
        NetworkError: no such endpoint link, it is wired already, or wiring it failed.
    """
    if not record.netns or record.model == "none":
        raise NetworkError("the sandbox has no network namespace wired to its VM")
    if any(e.name == name for e in record.endpoints):
        raise NetworkError(f"{name} is wired to the VM already")
    taps = {e.tap for e in record.endpoints}
    number = next(n for n in range(len(taps) + 1) if f"tap{n}{TAP_SUFFIX}" not in taps)
    tap = f"tap{number}{TAP_SUFFIX}"
    with _iproute(record.netns) as ipr:
        info = scan(ipr)
        endpoint = next((e for e in info.endpoints if e.name == name), None)
        if endpoint is None:
            found = ", ".join(e.name for e in info.endpoints) or "none"
            raise NetworkError(f"no veth, macvlan or ipvlan link {name!r} in {record.netns} (endpoints: {found})")
        if record.model == "tcfilter":
            _refuse_taken(ipr, record.netns, endpoint)
        try:
            endpoint_record, device = _wire_endpoint(ipr, record.netns, endpoint, tap, number, model=record.model)
        except BaseException as exc:
            with contextlib.suppress(NetworkError, OSError):
                _unwire_one(ipr, EndpointRecord(name, tap))
            wrapped = _wrap(exc, f"wire {name} in {record.netns}")
            if wrapped is exc:
                raise
            raise wrapped from exc
    names = {e.name for e in record.endpoints} | {name}
    return AddedEndpoint(endpoint_record, device, endpoint.interface,
                         tuple(r for r in info.routes if r.device in names),
                         tuple(n for n in info.neighbors if n.device == name))


def unwire_endpoint(record: NetworkRecord, name: str) -> NetworkRecord:
    """Undo one endpoint's wiring; the record without it.

    Raises:
        NetworkError: it is not wired, or it cannot be undone.
    """
    endpoint = next((e for e in record.endpoints if e.name == name), None)
    if endpoint is None:
        raise NetworkError(f"{name} is not wired to the VM (wired: {', '.join(e.name for e in record.endpoints)})")
    if os.path.exists(record.netns):
        with _iproute(record.netns) as ipr:
            try:
                _unwire_one(ipr, endpoint)
            except OSError as exc:
                raise NetworkError(f"unwire {name} in {record.netns}: {exc.strerror or exc}") from exc
    return replace(record, endpoints=tuple(e for e in record.endpoints if e.name != name))


def _unwire_one(ipr: Any, endpoint: EndpointRecord) -> None:
    for index in ipr.link_lookup(ifname=endpoint.name):
        remove_ingress(ipr, index)
        if endpoint.txqlen >= 0:
            ipr.link("set", index=index, txqlen=endpoint.txqlen)
    for index in ipr.link_lookup(ifname=endpoint.tap):
        ipr.link("del", index=index)


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
                    _unwire_one(ipr, endpoint)
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

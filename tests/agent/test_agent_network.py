"""The agent's network RPCs in host mode: a real agent in its own network namespace, veth links made
there by the test, checked with pyroute2 from outside."""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pyroute2 import IPRoute  # type: ignore[import-untyped]

from kata.agent import AgentClient, SandboxRequest
from kata.agent.types import ARPNeighbor, Interface, IPAddress, Route
from kata.guest.netlink import NetworkRequestError, translate
from kata.guest.netlink import model as net
from kata.protocols.pb import agent_pb2, types_pb2
from kata.ttrpc.status import InvalidArgumentError, NotFoundError, StatusError, UnimplementedError
from tests.agent.support import run_with_agent, start_host_agent, stop_host_agent

T = TypeVar("T")

GUEST_DIR = Path("/var/cache/pykata/guest")
MAC = "02:00:00:00:aa:01"
OTHER_MAC = "02:00:00:00:aa:02"
IFF_UP = 0x1
IFF_NOARP = 0x80
NUD_PERMANENT = 0x80
RT_SCOPE_LINK = 253
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class NetAgent:
    """A host-mode agent in its own network namespace, and a pyroute2 handle on that namespace."""

    url: str
    process: subprocess.Popen[bytes]
    ipr: Any

    def link(self, mac: str) -> dict[str, Any]:
        """Name, MTU, flags and addresses ("addr/len", link-local IPv6 left out) of the link with ``mac``."""
        (index,) = self.ipr.link_lookup(address=mac)
        (link,) = self.ipr.get_links(index)
        addresses = {f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in self.ipr.get_addr(index=index)}
        return {"name": link.get("IFLA_IFNAME"), "mtu": link.get("IFLA_MTU"), "flags": link["flags"],
                "addresses": {a for a in addresses if not a.startswith("fe80:")}}

    def routes(self) -> set[tuple[str, str, str]]:
        """(dest, gateway, device) of the main table's routes; dest "net/len" or "default"."""
        names = {link["index"]: link.get("IFLA_IFNAME") for link in self.ipr.get_links()}
        found = set()
        for family in (2, 10):
            for route in self.ipr.get_routes(family=family, table=254):
                dest = route.get("RTA_DST")
                found.add((f"{dest}/{route['dst_len']}" if dest else "default", route.get("RTA_GATEWAY") or "",
                           names.get(route.get("RTA_OIF"), "")))
        return found


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[NetAgent]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    sock = tmp_path / "agent.sock"
    process = start_host_agent(sock, tmp_path / "run", own_netns=True)
    # unshare execs the agent, so its pid is the agent's and /proc/<pid>/ns/net its namespace.
    ipr = IPRoute(netns=f"/proc/{process.pid}/ns/net", flags=0)
    try:
        ipr.link("add", ifname="veth-a", kind="veth", address=MAC, peer={"ifname": "veth-b"})
        ipr.link("set", index=ipr.link_lookup(ifname="veth-b")[0], state="up")
        yield NetAgent(f"unix://{sock}", process, ipr)
    finally:
        for name in ("veth-a", "veth-b", "eth0", "eth1"):  # the namespace goes with the agent; be explicit
            for index in ipr.link_lookup(ifname=name):
                ipr.link("del", index=index)
        ipr.close()
        stop_host_agent(process)


def run(agent: NetAgent, scenario: Callable[[AgentClient], Awaitable[T]]) -> T:
    return run_with_agent(agent.url, scenario)


ETH0 = Interface(name="eth0", hw_addr=MAC.upper(), mtu=1400,
                 addresses=(IPAddress("10.88.0.5", 24), IPAddress("fd00::5", 64)))


def test_update_interface_renames_sets_mtu_and_replaces_addresses(agent: NetAgent) -> None:
    index = agent.ipr.link_lookup(address=MAC)[0]
    agent.ipr.addr("add", index=index, address="192.0.2.9", prefixlen=28)  # a stale address: must go
    answer = run(agent, lambda client: client.update_interface(ETH0))
    assert (answer.name, answer.hw_addr, answer.mtu, answer.link_type) == ("eth0", MAC, 1400, "veth")
    assert {IPAddress("10.88.0.5", 24), IPAddress("fd00::5", 64)} <= set(answer.addresses)
    assert not answer.raw_flags & IFF_NOARP
    link = agent.link(MAC)
    assert (link["name"], link["mtu"]) == ("eth0", 1400)
    assert link["flags"] & IFF_UP
    assert link["addresses"] == {"10.88.0.5/24", "fd00::5/64"}


def test_update_interface_takes_a_name_in_use_and_turns_arp_off(agent: NetAgent) -> None:
    peer = agent.ipr.link_lookup(ifname="veth-b")[0]
    agent.ipr.link("set", index=peer, state="down")
    agent.ipr.link("set", index=peer, ifname="eth0", address=OTHER_MAC, state="up")
    wanted = Interface(name="eth0", hw_addr=MAC, raw_flags=IFF_NOARP, addresses=(IPAddress("10.1.0.2", 16),))
    answer = run(agent, lambda client: client.update_interface(wanted))
    assert answer.name == "eth0"
    assert answer.raw_flags & IFF_NOARP
    assert agent.link(MAC)["name"] == "eth0"
    other = agent.link(OTHER_MAC)
    assert other["name"] == "veth-a"  # the two links swapped names
    assert other["flags"] & IFF_UP  # and the other one is up again


def test_update_routes_replaces_routes_adding_link_scope_ones_first(agent: NetAgent) -> None:
    wanted = (
        Route(dest="", gateway="10.99.0.1", device="eth0"),  # listed first, needs the next one
        Route(dest="10.99.0.1/32", device="eth0", scope=RT_SCOPE_LINK),
        Route(dest="198.51.100.0/24", gateway="10.88.0.1", device="eth0", mtu=1300),
        Route(dest="", gateway="fd00::1", device="eth0", family=6),
    )

    run(agent, lambda client: client.update_interface(ETH0))
    index = agent.ipr.link_lookup(ifname="eth0")[0]
    agent.ipr.route("add", dst="203.0.113.0/24", gateway="10.88.0.1", oif=index)  # stale: must go

    async def scenario(client: AgentClient) -> tuple[tuple[Route, ...], tuple[Route, ...]]:
        return await client.update_routes(wanted), await client.list_routes()

    answer, listed = run(agent, scenario)
    routes = agent.routes()
    assert {("default", "10.99.0.1", "eth0"), ("10.99.0.1/32", "", "eth0"), ("198.51.100.0/24", "10.88.0.1", "eth0"),
            ("default", "fd00::1", "eth0")} <= routes
    assert ("203.0.113.0/24", "10.88.0.1", "eth0") not in routes
    assert ("10.88.0.0/24", "", "eth0") in routes  # the address's own subnet route stays
    assert answer == listed
    assert Route(dest="198.51.100.0/24", gateway="10.88.0.1", device="eth0", mtu=1300) in answer
    assert Route(dest="", gateway="fd00::1", device="eth0", family=6) in answer
    assert Route(dest="10.99.0.1/32", device="eth0", scope=RT_SCOPE_LINK) in answer


def test_list_interfaces_shows_every_link_with_addresses(agent: NetAgent) -> None:
    async def scenario(client: AgentClient) -> tuple[Interface, ...]:
        await client.update_interface(ETH0)
        return await client.list_interfaces()

    interfaces = {i.name: i for i in run(agent, scenario)}
    assert set(interfaces) == {"lo", "eth0", "veth-b"}
    assert IPAddress("127.0.0.1", 8) not in interfaces["lo"].addresses  # lo is down in a new namespace
    eth0 = interfaces["eth0"]
    assert (eth0.hw_addr, eth0.mtu, eth0.link_type) == (MAC, 1400, "veth")
    assert {IPAddress("10.88.0.5", 24), IPAddress("fd00::5", 64)} <= set(eth0.addresses)


def test_add_arp_neighbors_adds_permanent_entries(agent: NetAgent) -> None:
    neighbors = (ARPNeighbor("10.88.0.1", "eth0", lladdr="02:AA:BB:CC:DD:01"),
                 ARPNeighbor("fd00::1", "eth0", lladdr="02:aa:bb:cc:dd:02"))

    async def scenario(client: AgentClient) -> None:
        await client.update_interface(ETH0)
        await client.add_arp_neighbors(neighbors)
        await client.add_arp_neighbors(neighbors[:1])  # adding again replaces, no error

    run(agent, scenario)
    index = agent.ipr.link_lookup(ifname="eth0")[0]
    found = {(n.get("NDA_DST"), n.get("NDA_LLADDR"), n["state"]) for n in agent.ipr.get_neighbours(ifindex=index)}
    assert {("10.88.0.1", "02:aa:bb:cc:dd:01", NUD_PERMANENT), ("fd00::1", "02:aa:bb:cc:dd:02", NUD_PERMANENT)} <= found


def test_bad_requests_get_one_line_errors_change_nothing_and_the_agent_keeps_serving(agent: NetAgent) -> None:
    async def refused(call: Awaitable[Any], kind: type[StatusError], *words: str) -> None:
        with pytest.raises(kind) as info:
            await call
        message = str(info.value)
        assert "\n" not in message
        for word in words:
            assert word in message

    async def scenario(client: AgentClient) -> bool:
        await refused(client.update_interface(Interface(name="eth9", hw_addr="02:00:00:00:ee:ee")),
                      NotFoundError, "UpdateInterface", "02:00:00:00:ee:ee")
        await refused(client.update_interface(Interface(name="eth0", hw_addr=MAC,
                                                        addresses=(IPAddress("10.0.0.300", 24),))),
                      InvalidArgumentError, "IPAddresses[0].address", "10.0.0.300")
        await refused(client.update_interface(Interface(name="eth0", hw_addr=MAC,
                                                        addresses=(IPAddress("10.0.0.3", 33),))),
                      InvalidArgumentError, "IPAddresses[0].mask", "33")
        await refused(client.update_interface(Interface(name="eth0", hw_addr="02:zz")), InvalidArgumentError,
                      "hwAddr")
        await refused(client.update_interface(Interface(name="much-too-long-name", hw_addr=MAC)),
                      InvalidArgumentError, "interface.name")
        await client.update_interface(ETH0)
        before = await client.list_routes()
        await refused(client.update_routes([Route(dest="10.1.0.0/16", device="eth0"),
                                            Route(dest="10.2.0.0/16", device="nosuch")]),
                      NotFoundError, "Routes[1]", "nosuch")
        await refused(client.update_routes([Route(dest="10.1.0.0/99", device="eth0")]), InvalidArgumentError,
                      "Routes[0].dest")
        await refused(client.update_routes([Route(gateway="192.0.2.1", device="eth0")]), InvalidArgumentError,
                      "UpdateRoutes", "192.0.2.1")  # no route reaches that gateway
        await refused(client.add_arp_neighbors([ARPNeighbor("10.88.0.7", "eth0", lladdr="nope")]),
                      InvalidArgumentError, "ARPNeighbors[0].lladdr")
        await refused(client.add_arp_neighbors([ARPNeighbor("10.88.0.7", "eth7")]), NotFoundError, "eth7")
        await refused(client._call("UpdateRoutes", agent_pb2.UpdateRoutesRequest(), agent_pb2.Routes),
                      InvalidArgumentError, "no routes")
        assert await client.list_routes() == before  # refused requests left the routes alone
        return await client.check()

    assert run(agent, scenario)
    assert agent.link(MAC)["addresses"] == {"10.88.0.5/24", "fd00::5/64"}


def test_iptables_rpcs_stay_unimplemented_with_their_reason(agent: NetAgent) -> None:
    async def scenario(client: AgentClient) -> None:
        with pytest.raises(UnimplementedError, match="SetIPTables: the guest image carries no iptables"):
            await client._call("SetIPTables", agent_pb2.SetIPTablesRequest(), agent_pb2.SetIPTablesResponse)

    run(agent, scenario)


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
                         check=True, capture_output=True, text=True, timeout=60, cwd=REPO)
    return set(out.stdout.split())


def test_agent_start_up_does_not_import_pyroute2_and_the_netlink_layer_avoids_asyncio() -> None:
    start = _modules_after("import kata.guest.init, kata.guest.server, kata.guest.services")
    assert not {m for m in start if m.startswith(("pyroute2", "kata.guest.netlink."))} - {"kata.guest.netlink.errors"}
    loaded = _modules_after("import kata.guest.netlink.rtnl, kata.guest.netlink.guestnet, kata.guest.netlink.translate")
    assert "pyroute2.netlink.rtnl.ifinfmsg" in loaded
    assert not {m for m in loaded if m.startswith(("asyncio", "pyroute2.iproute", "pyroute2.ndb"))}


# Kata's field conventions, translated without a kernel.


def test_masks_are_prefix_lengths_or_ipv4_netmasks_and_macs_any_case() -> None:
    config = translate.interface_from_pb(types_pb2.Interface(
        name="eth0", hwAddr="02-AB-00-00-00-01", raw_flags=IFF_NOARP, IPAddresses=[
            types_pb2.IPAddress(address="10.0.0.2", mask="255.255.255.0"),
            types_pb2.IPAddress(family=types_pb2.v6, address="FD00:0::2", mask="64")]))
    assert config.mac == "02:ab:00:00:00:01"
    assert config.noarp
    assert config.addresses == (net.Address(net.AF_INET, "10.0.0.2", 24), net.Address(net.AF_INET6, "fd00::2", 64))
    for mask in ("", "33", "255.0.255.0", "-1"):
        with pytest.raises(NetworkRequestError, match=r"IPAddresses\[0\]\.mask"):
            translate.interface_from_pb(types_pb2.Interface(
                hwAddr="02:ab:00:00:00:01", IPAddresses=[types_pb2.IPAddress(address="10.0.0.2", mask=mask)]))


def test_route_dest_source_and_family_conventions() -> None:
    def route(**fields: Any) -> net.Route:
        return translate.route_from_pb(types_pb2.Route(device="eth0", **fields), "Routes[0]")

    assert route(gateway="10.0.0.1").dest == "" and route(dest="default").dest_length == 0
    host = route(dest="10.0.0.9")
    assert (host.dest, host.dest_length) == ("10.0.0.9", 32)
    network = route(dest="10.1.2.3/16", source="10.1.0.5", flags=0x14)
    assert (network.dest, network.dest_length, network.source, network.flags) == ("10.1.0.0", 16, "10.1.0.5", 4)
    v6 = route(gateway="fd00::1")  # family field left at v4: the address decides
    assert v6.family == net.AF_INET6
    assert route(family=types_pb2.v6).family == net.AF_INET6
    assert route(dest="fd00::/64", source="fd01::/48").source_prefix == "fd01::"
    with pytest.raises(NetworkRequestError, match="mixes IPv4 and IPv6"):
        route(dest="10.0.0.0/8", gateway="fd00::1")
    with pytest.raises(NetworkRequestError, match="IPv4 routes take a source address"):
        route(dest="10.0.0.0/8", source="10.1.0.0/16")
    with pytest.raises(NetworkRequestError, match=r"Routes\[0\]\.device is empty"):
        translate.route_from_pb(types_pb2.Route(dest="10.0.0.0/8"), "Routes[0]")


def test_listed_routes_and_interfaces_use_kata_text_forms() -> None:
    listed = translate.route_to_pb(net.Route(family=net.AF_INET6, gateway="fd00::1", device="eth0"))
    assert (listed.dest, listed.family, listed.gateway) == ("", types_pb2.v6, "fd00::1")
    link = net.Link(index=2, name="eth0", mac="02:00:00:00:00:01", mtu=1500, flags=IFF_UP, kind="veth",
                    addresses=(net.Address(net.AF_INET, "10.0.0.2", 24),))
    pb = translate.interface_to_pb(link)
    assert (pb.device, pb.name, pb.type, pb.raw_flags) == ("eth0", "eth0", "veth", IFF_UP)
    assert [(a.family, a.address, a.mask) for a in pb.IPAddresses] == [(types_pb2.v4, "10.0.0.2", "24")]
    neighbour = translate.neighbour_from_pb(types_pb2.ARPNeighbor(
        toIPAddress=types_pb2.IPAddress(address="10.0.0.1"), device="eth0"), "ARPNeighbors[0]")
    assert (neighbour.state, neighbour.lladdr) == (NUD_PERMANENT, "")


# The real thing: a virtio-net NIC in a TCG guest (its tap lives in a namespace of its own).

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000


def private_tap() -> int:
    """An open tap whose link lives in a throwaway network namespace: nothing shows in the host's."""
    fds: list[int] = []

    def make() -> None:  # unshare(CLONE_NEWNET) in a thread moves that thread only
        if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"tap0", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        fds.append(fd)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    return fds[0]


async def configure_guest_nic(work: Path, tap: int) -> tuple[Interface, tuple[Route, ...], tuple[Interface, ...]]:
    from kata.config.schema import HypervisorConfig
    from kata.hypervisor.devices import NetDevice
    from kata.hypervisor.qemu import QemuHypervisor

    config = HypervisorConfig(kernel=str(GUEST_DIR / "vmlinux"), initrd=str(GUEST_DIR / "kata-initrd.img"),
                              accelerator="tcg")
    vm = QemuHypervisor(config, work / "vm", sandbox_id="netvm")
    await vm.prepare([NetDevice(id="net0", mac=MAC, tap_fds=(tap,))])
    await vm.start(timeout=60)
    try:
        client = await AgentClient.connect(f"unix://{vm.agent.socket_path}", timeout=30)
        try:
            await client.wait_ready(90)
            await client.create_sandbox(SandboxRequest(sandbox_id="netvm"))
            try:
                answer = await client.update_interface(replace(ETH0, name="eth1"))
            except UnimplementedError:
                pytest.skip(f"the guest image in {GUEST_DIR} predates the network RPCs: rebuild it")
            routes = await client.update_routes([Route(gateway="10.88.0.1", device="eth1")])
            await client.add_arp_neighbors([ARPNeighbor("10.88.0.1", "eth1", lladdr="02:aa:00:00:00:01")])
            interfaces = await client.list_interfaces()
            await client.destroy_sandbox()
            await asyncio.wait_for(vm.wait(), 20)
            return answer, routes, interfaces
        finally:
            await client.close()
    finally:
        await vm.stop()


@pytest.mark.vm
def test_update_interface_on_a_virtio_net_nic_in_a_vm(tmp_path: Path) -> None:
    if not ((GUEST_DIR / "vmlinux").exists() and (GUEST_DIR / "kata-initrd.img").exists()):
        pytest.skip(f"no guest image in {GUEST_DIR}: run `kata-runtime image build`")
    tap = private_tap()
    try:
        answer, routes, interfaces = asyncio.run(configure_guest_nic(tmp_path, tap))
    finally:
        os.close(tap)
    assert (answer.name, answer.mtu, answer.link_type) == ("eth1", 1400, "")  # a plain virtio-net NIC
    assert {IPAddress("10.88.0.5", 24), IPAddress("fd00::5", 64)} <= set(answer.addresses)
    assert Route(dest="", gateway="10.88.0.1", device="eth1") in routes
    assert {i.name for i in interfaces} == {"lo", "eth1"}

"""kata.network on the host, in real network namespaces wired by the CNI plugins (no VM)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kata.errors import NetworkError
from kata.network import NetworkRecord, unwire, unwire_endpoint, wire, wire_endpoint
from tests.cni import cni_attach, cni_netns, netns_snapshot


def _links(path: str) -> str:
    return subprocess.run(["ip", "-n", os.path.basename(path), "-o", "link", "show"], capture_output=True,
                          text=True, check=True).stdout


def test_wire_reads_the_cni_network_and_unwire_restores_it_exactly(tmp_path: Path) -> None:
    with cni_netns(tmp_path) as ns:
        before = netns_snapshot(ns.path)
        wired = wire(ns.path, sandbox_id="t")
        try:
            (endpoint,) = wired.info.endpoints
            assert endpoint.kind == "veth" and endpoint.name == "eth0"
            assert [(a.address, a.prefix_length) for a in endpoint.interface.addresses] == [(ns.address, ns.prefix)]
            assert [(r.dest, r.gateway, r.device) for r in wired.info.routes] == [("", ns.gateway, "eth0")]
            (device,) = wired.devices
            assert device.mac == endpoint.interface.hw_addr and device.mtu == endpoint.interface.mtu
            assert len(device.tap_fds) == 1 and "tap0_kata" in _links(ns.path)
            assert "mirred" in netns_snapshot(ns.path)["filters eth0"]
            assert "mirred" in netns_snapshot(ns.path)["filters tap0_kata"]
            assert NetworkRecord.from_json(wired.record.to_json()) == wired.record
        finally:
            wired.close_fds()
            unwire(wired.record)
        assert netns_snapshot(ns.path) == before
        unwire(wired.record)  # idempotent


def test_an_endpoint_with_an_ingress_qdisc_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    with cni_netns(tmp_path) as ns:
        subprocess.run(["ip", "netns", "exec", os.path.basename(ns.path), "tc", "qdisc", "add", "dev", "eth0",
                        "ingress"], check=True)
        before = netns_snapshot(ns.path)
        with pytest.raises(NetworkError, match=r"eth0 .* already has an ingress qdisc"):
            wire(ns.path)
        assert netns_snapshot(ns.path) == before


def test_hotplug_wiring_of_a_second_network(tmp_path: Path) -> None:
    with cni_netns(tmp_path) as ns, cni_attach(tmp_path, ns, "eth1", "10.88.79.0/24", "pkcni2") as second:
        before = netns_snapshot(ns.path)
        record = NetworkRecord(ns.path)
        with pytest.raises(NetworkError, match="no veth, macvlan or ipvlan link 'eth9'"):
            wire_endpoint(record, "eth9")
        added = wire_endpoint(record, "eth1")
        try:
            assert added.record.tap == "tap0_kata" and added.interface.name == "eth1"
            assert [(a.address, a.prefix_length) for a in added.interface.addresses] == [(second.address, 24)]
            record = NetworkRecord(ns.path, endpoints=(added.record,))
            with pytest.raises(NetworkError, match="wired to the VM already"):
                wire_endpoint(record, "eth1")
        finally:
            os.close(added.device.tap_fds[0])
        assert unwire_endpoint(record, "eth1").endpoints == ()
        assert netns_snapshot(ns.path) == before
        with pytest.raises(NetworkError, match="not wired"):
            unwire_endpoint(record, "eth0")


def test_new_and_missing_namespaces() -> None:
    wired = wire("", sandbox_id="pykata-unit-new")
    assert wired.record.created_netns and os.path.exists(wired.record.netns) and not wired.devices
    assert os.stat(wired.record.netns).st_ino != os.stat("/proc/self/ns/net").st_ino  # a namespace of its own
    assert _links(wired.record.netns).split(":")[1].strip() == "lo" and _links(wired.record.netns).count("\n") == 1
    with pytest.raises(NetworkError, match="exists already"):
        wire("", sandbox_id="pykata-unit-new")
    unwire(wired.record)
    assert not os.path.exists(wired.record.netns)
    assert wire("", new_netns=False).record.netns == ""
    assert wire(None).devices == ()
    with pytest.raises(NetworkError, match="open network namespace /run/netns/pykata-nope"):
        wire("/run/netns/pykata-nope")
    with pytest.raises(NetworkError, match="internetworking model 'bridged' is not supported"):
        wire("/run/netns/x", model="bridged")


def test_macvtap_passthru_takes_the_endpoints_mac_and_goes_without_a_trace(tmp_path: Path) -> None:
    with cni_netns(tmp_path) as ns:
        before = netns_snapshot(ns.path)
        wired = wire(ns.path, model="macvtap")
        try:
            (device,) = wired.devices
            assert device.mac == wired.info.endpoints[0].interface.hw_addr
            assert "tap0_kata@eth0" in _links(ns.path) and "macvtap" not in netns_snapshot(ns.path)["qdiscs"]
            assert os.readlink(f"/proc/self/fd/{device.tap_fds[0]}").startswith("/dev/tap")
        finally:
            wired.close_fds()
            unwire(wired.record)
        assert netns_snapshot(ns.path) == before

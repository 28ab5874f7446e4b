"""A container in a VM on a CNI-wired network namespace: the CNI address, TCP both ways, interface hotplug,
and a namespace left exactly as it was."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from kata.oci.model import Mount
from kata.sandbox import OutputBuffer, Sandbox
from tests.agent.sandbox_support import make_bundle
from tests.cni import CniNetns, cni_attach, cni_netns, netns_snapshot, receive_all
from tests.vm.test_sandbox import config_for

pytestmark = pytest.mark.vm
PAYLOAD_IN = b"from the host " * 2000  # ~28 KB: several segments each way
PAYLOAD_OUT = b"from the guest " * 2000


def _run(sb: Sandbox, bundle: Path, name: str) -> str:
    out = OutputBuffer()
    c = sb.create_container(bundle, container_id=name, stdout=out)
    c.start()
    assert c.wait(timeout=30) == 0, out.getvalue()
    c.delete()
    return out.getvalue().decode()


def _host_to_container(sb: Sandbox, ns: CniNetns, tmp_path: Path) -> None:
    heard = OutputBuffer()
    listener = sb.create_container(make_bundle(tmp_path / "l", "busybox", "nc", "-l", "-p", "5000"),
                                   container_id="listen", stdout=heard)
    listener.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection((ns.address, 5000), timeout=5) as conn:
                conn.sendall(PAYLOAD_IN)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert listener.wait(timeout=30) == 0
    assert heard.getvalue() == PAYLOAD_IN
    listener.delete()


def _container_to_host(sb: Sandbox, ns: CniNetns, tmp_path: Path, name: str = "send") -> None:
    received: list[bytes] = []
    with socket.create_server((ns.gateway, 0)) as server:
        port = server.getsockname()[1]
        thread = threading.Thread(target=receive_all, args=(server, received), daemon=True)
        thread.start()
        bundle = make_bundle(tmp_path / name, "sh", "-c", f"busybox nc {ns.gateway} {port} < /payload")
        (bundle / "rootfs" / "payload").write_bytes(PAYLOAD_OUT)
        _run(sb, bundle, name)
        thread.join(30)
    assert received == [PAYLOAD_OUT]


def _hotplug(sb: Sandbox, ns: CniNetns, tmp_path: Path) -> None:
    with cni_attach(tmp_path, ns, "eth1", "10.88.78.0/24", "pkcni1") as second:
        interface = sb.add_interface("eth1")
        assert interface.name == "eth1"
        assert (second.address, second.prefix) in {(a.address, a.prefix_length) for a in interface.addresses}
        assert any(i.name == "eth1" for i in sb.list_interfaces())
        assert any(r.device == "eth0" and r.gateway == ns.gateway for r in sb.list_routes())
        _container_to_host(sb, second, tmp_path, "send-eth1")
        sb.remove_interface("eth1")
        assert not any(i.name == "eth1" for i in sb.list_interfaces())


@pytest.mark.parametrize("model", ["tcfilter", "macvtap"])
def test_container_gets_the_cni_address_talks_tcp_and_hotplugs(tmp_path: Path, model: str) -> None:
    config = config_for("virtio-fs")
    config = replace(config, runtime=replace(config.runtime, internetworking_model=model))
    with cni_netns(tmp_path) as ns:
        before = netns_snapshot(ns.path)
        sb = Sandbox.create(config, root=tmp_path / "run", sandbox_id="netsb", netns=ns.path)
        try:
            etc = tmp_path / "etc"
            etc.mkdir()
            (etc / "resolv.conf").write_text("nameserver 10.88.77.1\nsearch pykata.test\n")
            (etc / "hosts").write_text("127.0.0.1 localhost\n10.88.77.9 db.pykata.test\n")
            files = [Mount(destination=f"/etc/{name}", type="bind", source=str(etc / name), options=("rbind", "ro"))
                     for name in ("resolv.conf", "hosts")]
            bundle = make_bundle(tmp_path / "b", "sh", "-c", "ip -o -4 addr show eth0; ip -o -4 addr show lo; "
                                 "ip route; hostname; cat /etc/resolv.conf /etc/hosts", mounts=files)
            spec = json.loads((bundle / "config.json").read_text())
            (bundle / "config.json").write_text(json.dumps({**spec, "hostname": "web-1"}))
            text = _run(sb, bundle, "show")
            assert f"inet {ns.address}/{ns.prefix}" in text and f"default via {ns.gateway}" in text, text
            assert "inet 127.0.0.1/8" in text, text  # the guest's loopback is up: the containers' localhost
            assert "\nweb-1\n" in text and "search pykata.test" in text and "db.pykata.test" in text, text
            _host_to_container(sb, ns, tmp_path)
            _container_to_host(sb, ns, tmp_path)
            _hotplug(sb, ns, tmp_path)
        finally:
            sb.delete()
        assert netns_snapshot(ns.path) == before

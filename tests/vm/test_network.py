"""A container in a VM on a CNI-wired network namespace: the CNI address, TCP both ways, exact teardown."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from kata.sandbox import OutputBuffer, Sandbox
from tests.agent.sandbox_support import make_bundle
from tests.cni import cni_netns, netns_snapshot
from tests.vm.test_sandbox import config_for

pytestmark = pytest.mark.vm
PAYLOAD_IN = b"from the host " * 2000  # ~28 KB: several segments each way
PAYLOAD_OUT = b"from the guest " * 2000


def _serve_once(server: socket.socket, received: list[bytes]) -> None:
    connection, _ = server.accept()
    with connection:
        chunks = []
        while data := connection.recv(65536):
            chunks.append(data)
        received.append(b"".join(chunks))


def test_container_gets_the_cni_address_and_talks_tcp_both_ways(tmp_path: Path) -> None:
    config = config_for("virtio-fs")
    with cni_netns(tmp_path) as ns:
        before = netns_snapshot(ns.path)
        sb = Sandbox.create(config, root=tmp_path / "run", sandbox_id="netsb", netns=ns.path)
        try:
            show = OutputBuffer()
            c = sb.create_container(make_bundle(tmp_path / "b", "sh", "-c", "ip -o -4 addr show eth0; ip route"),
                                    container_id="show", stdout=show)
            c.start()
            assert c.wait() == 0
            text = show.getvalue().decode()
            assert f"inet {ns.address}/{ns.prefix}" in text and f"default via {ns.gateway}" in text, text
            c.delete()

            # host -> container: the container listens, the host (on the bridge) connects and sends
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

            # container -> host: the host listens on the bridge address, the container sends
            received: list[bytes] = []
            with socket.create_server((ns.gateway, 0)) as server:
                port = server.getsockname()[1]
                thread = threading.Thread(target=_serve_once, args=(server, received), daemon=True)
                thread.start()
                bundle = make_bundle(tmp_path / "s", "sh", "-c", f"busybox nc {ns.gateway} {port} < /payload")
                (bundle / "rootfs" / "payload").write_bytes(PAYLOAD_OUT)
                sender = sb.create_container(bundle, container_id="send")
                sender.start()
                assert sender.wait(timeout=30) == 0
                thread.join(30)
            assert received == [PAYLOAD_OUT]
        finally:
            sb.delete()
        assert netns_snapshot(ns.path) == before

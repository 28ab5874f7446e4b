"""containerd 1.6's CRI plugin runs a pod on a CNI network (Debian's bridge + host-local plugins): the shim
wires the pod's network namespace to its guest, so the pod's containers have the CNI address and TCP works
between the host and the pod IP; kata-runtime's network verbs list, hotplug and unplug its interfaces."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.cni import CniNetns, cni_attach, receive_all
from tests.containerd import CniNetwork
from tests.cri import CriClient, cri
from tests.e2e.test_shim_cri import (
    HANDLER,
    KATA_ROOT,
    cri_containerd,
    exec_ok,
    our_processes,
    pod_config,
    run_container,
    wait_for,
)

pytestmark = [pytest.mark.vm, pytest.mark.e2e]
NETWORK = CniNetwork()
GATEWAY = str(next(ipaddress.ip_network(NETWORK.subnet).hosts()))  # the bridge's address (isGateway)
KATA_RUNTIME = str(Path(sys.executable).parent / "kata-runtime")
PAYLOAD_IN = b"from the host " * 2000  # ~28 KB: several segments each way
PAYLOAD_OUT_SIZE = 30000
PORT = 5000
SECOND_SUBNET = "10.88.81.0/24"  # a second CNI network hotplugged into the pod
SECOND_BRIDGE = "pkcri1"


@pytest.fixture
def kata_cri_cni(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CriClient]:
    """containerd's CRI plugin with the `kata` handler and the CNI network NETWORK."""
    with cri_containerd(tmp_path_factory.mktemp("cri-images"), NETWORK) as client:
        yield client


def pod_netns(pod_id: str) -> str:
    """The network namespace the shim wired to the pod's guest (from the sandbox's state.json)."""
    state = json.loads((KATA_ROOT / pod_id / "state.json").read_text())
    return str(state["network"]["netns"])


def send_to_pod(client: CriClient, container_id: str, address: str) -> None:
    """The container listens with nc (an ExecSync, whose stdout is what it heard); the host connects to
    the pod IP through the bridge and sends PAYLOAD_IN."""
    with ThreadPoolExecutor(1) as pool:
        listening = pool.submit(client.exec_sync, container_id, "busybox", "nc", "-l", "-p", str(PORT))
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection((address, PORT), timeout=5) as connection:
                    connection.sendall(PAYLOAD_IN)
                break
            except OSError:  # refused until nc listens
                assert time.monotonic() < deadline, "the pod never accepted a connection"
                time.sleep(0.3)
        heard = listening.result(timeout=90)
    assert heard.exit_code == 0, heard.stderr
    assert heard.stdout == PAYLOAD_IN


def receive_from_pod(client: CriClient, container_id: str, gateway: str) -> None:
    """The host listens on the bridge's address; the container connects and sends PAYLOAD_OUT_SIZE bytes."""
    received: list[bytes] = []
    with socket.create_server((gateway, 0)) as server:
        server.settimeout(90)
        port = server.getsockname()[1]
        thread = threading.Thread(target=receive_all, args=(server, received), daemon=True)
        thread.start()
        exec_ok(client, container_id, "sh", "-c", f"yes from-the-pod | head -c {PAYLOAD_OUT_SIZE} | "
                f"busybox nc {gateway} {port}")
        thread.join(60)
    assert [len(data) for data in received] == [PAYLOAD_OUT_SIZE]
    assert received[0].startswith(b"from-the-pod\nfrom-the-pod\n")


def remove_pod(client: CriClient, pod_id: str, netns: str) -> None:
    """StopPodSandbox + RemovePodSandbox: no shim, VM, state dir or network namespace left."""
    client.stop_pod_sandbox(pod_id)
    client.remove_pod_sandbox(pod_id)
    wait_for(lambda: not our_processes("containerd-shim-kata-v2"), 15, "the shim to exit")
    assert not our_processes("qemu-system-x86_64")
    assert not (KATA_ROOT / pod_id).exists()
    assert not Path(netns).exists()


def test_cri_pod_gets_its_cni_address_in_the_guest(kata_cri_cni: CriClient, tmp_path: Path) -> None:
    client = kata_cri_cni
    pod = pod_config("netpod", tmp_path, host_network=False)
    pod_id = client.run_pod_sandbox(pod, HANDLER)
    status = client.pod_sandbox_status(pod_id)
    assert status.state == cri.SANDBOX_READY
    address = status.network.ip
    assert ipaddress.ip_address(address) in ipaddress.ip_network(NETWORK.subnet), status
    netns = pod_netns(pod_id)
    assert Path(netns).exists()

    box = run_container(client, pod_id, pod, "box", "sleep", "1000")
    shown = exec_ok(client, box, "ip", "-o", "-4", "addr", "show", "eth0")
    prefix = ipaddress.ip_network(NETWORK.subnet).prefixlen
    assert f"inet {address}/{prefix} " in shown, shown
    assert f"default via {GATEWAY} dev eth0" in exec_ok(client, box, "ip", "route")
    send_to_pod(client, box, address)
    receive_from_pod(client, box, GATEWAY)
    remove_pod(client, pod_id, netns)


def kata_runtime(*args: str) -> subprocess.CompletedProcess[str]:
    """``kata-runtime --root <the shim's state root> ARGS``."""
    return subprocess.run([KATA_RUNTIME, "--root", str(KATA_ROOT), *args], capture_output=True, text=True,
                          timeout=240, check=False)


def json_of(*args: str) -> object:
    """The JSON a kata-runtime verb printed (it must succeed)."""
    done = kata_runtime(*args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def addresses(interface: dict[str, object]) -> set[tuple[object, object]]:
    return {(a["address"], a["mask"]) for a in interface["IPAddresses"]}  # type: ignore[attr-defined]


def hotplug_second_network(client: CriClient, pod_id: str, box: str, pod_ns: CniNetns, tmp_path: Path) -> None:
    """A second CNI network (another bridge, eth1) in the pod's namespace: add-iface puts it in the guest
    (TCP to its own gateway works), list-ifaces shows it, del-iface takes it out again."""
    with cni_attach(tmp_path, pod_ns, "eth1", SECOND_SUBNET, SECOND_BRIDGE) as second:
        added = json_of("add-iface", pod_id, "eth1")
        assert isinstance(added, dict) and added["name"] == "eth1", added
        assert (second.address, str(second.prefix)) in addresses(added)
        listed = json_of("list-ifaces", pod_id)
        assert isinstance(listed, list) and "eth1" in {i["name"] for i in listed}
        assert f"inet {second.address}/{second.prefix} " in exec_ok(client, box, "ip", "-o", "-4", "addr", "show",
                                                                     "eth1")
        receive_from_pod(client, box, second.gateway)
        deleted = kata_runtime("del-iface", pod_id, "eth1")
        assert (deleted.returncode, deleted.stdout, deleted.stderr) == (0, "", "")
        listed = json_of("list-ifaces", pod_id)
        assert isinstance(listed, list) and "eth1" not in {i["name"] for i in listed}
        again = kata_runtime("del-iface", pod_id, "eth1")
        assert again.returncode == 1 and again.stderr.count("\n") == 1 and "eth1" in again.stderr, again.stderr


def test_kata_runtime_network_verbs_on_a_cri_pod(kata_cri_cni: CriClient, tmp_path: Path) -> None:
    client = kata_cri_cni
    pod = pod_config("verbs", tmp_path, host_network=False)
    pod_id = client.run_pod_sandbox(pod, HANDLER)
    address = client.pod_sandbox_status(pod_id).network.ip
    box = run_container(client, pod_id, pod, "box", "sleep", "1000")
    netns = pod_netns(pod_id)
    prefix = ipaddress.ip_network(NETWORK.subnet).prefixlen

    interfaces = json_of("list-ifaces", pod_id)
    assert isinstance(interfaces, list)
    eth0 = next(i for i in interfaces if i["name"] == "eth0")
    assert (address, str(prefix)) in addresses(eth0) and eth0["mtu"] > 0 and eth0["hwAddr"], eth0
    routes = json_of("list-routes", pod_id)
    assert isinstance(routes, list)
    assert {"gateway": GATEWAY, "device": "eth0"}.items() <= next(r for r in routes if "dest" not in r).items(), routes

    hotplug_second_network(client, pod_id, box, CniNetns(netns, address, prefix, GATEWAY, NETWORK.bridge, {}),
                           tmp_path)
    missing = kata_runtime("add-iface", pod_id, "eth7")
    assert missing.returncode == 1 and missing.stderr.startswith(f"kata-runtime: error: add-iface {pod_id}: ")
    refused = kata_runtime("iptables", "get", "--sandbox-id", pod_id)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == (f"kata-runtime: error: iptables get {pod_id}: not supported: the guest has no iptables "
                              "(UNIMPLEMENTED: GetIPTables: the guest image carries no iptables)\n")
    assert exec_ok(client, box, "echo", "still there") == "still there\n"
    remove_pod(client, pod_id, netns)

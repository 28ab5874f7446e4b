"""A network namespace wired by the real CNI plugins (Debian's containernetworking-plugins), called directly."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CNI_PATH = "/usr/lib/cni"


@dataclass(frozen=True)
class CniNetns:
    """A namespace with a CNI-assigned address on ``eth0``, behind the host bridge ``bridge``."""

    path: str
    address: str  # the container's, e.g. 10.88.77.2
    prefix: int
    gateway: str  # the bridge's address on the host
    bridge: str
    result: dict[str, object]


def _plugin(command: str, config: dict[str, object], netns: str, container_id: str, ifname: str = "eth0",
            ) -> dict[str, object]:
    env = {**os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
           "CNI_IFNAME": ifname, "CNI_PATH": CNI_PATH}
    proc = subprocess.run([f"{CNI_PATH}/{config['type']}"], input=json.dumps(config), env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"CNI {command} failed: {proc.stdout} {proc.stderr}")
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def _bridge_config(name: str, bridge: str, subnet: str, tmp: Path, routes: list[dict[str, str]],
                   ) -> dict[str, object]:
    return {"cniVersion": "1.0.0", "name": name, "type": "bridge", "bridge": bridge, "isGateway": True,
            "ipMasq": False, "ipam": {"type": "host-local", "subnet": subnet, "dataDir": str(tmp / f"ipam-{name}"),
                                      "routes": routes}}


def _attachment(result: dict[str, object], path: str, bridge: str) -> CniNetns:
    ip = result["ips"][0]  # type: ignore[index]
    address, _, prefix = str(ip["address"]).partition("/")
    return CniNetns(path, address, int(prefix), str(ip["gateway"]), bridge, result)


@contextlib.contextmanager
def cni_attach(tmp: Path, netns: CniNetns, ifname: str, subnet: str, bridge: str) -> Iterator[CniNetns]:
    """A second network (another bridge, interface ``ifname``) in the same namespace; DEL after."""
    config = _bridge_config(f"pykata-{ifname}", bridge, subnet, tmp, [])
    try:
        yield _attachment(_plugin("ADD", config, netns.path, os.path.basename(netns.path), ifname), netns.path,
                          bridge)
    finally:
        with contextlib.suppress(RuntimeError):
            _plugin("DEL", config, netns.path, os.path.basename(netns.path), ifname)
        subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)


@contextlib.contextmanager
def cni_netns(tmp: Path, name: str = "pykatacni", subnet: str = "10.88.77.0/24", bridge: str = "pkcni0",
              ) -> Iterator[CniNetns]:
    """``ip netns add NAME``, then the bridge + host-local plugins (CNI_COMMAND=ADD); DEL and removal after."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    path = f"/run/netns/{name}"
    config = _bridge_config("pykata-test", bridge, subnet, tmp, [{"dst": "0.0.0.0/0"}])
    try:
        yield _attachment(_plugin("ADD", config, path, name), path, bridge)
    finally:
        with contextlib.suppress(RuntimeError):
            _plugin("DEL", config, path, name)
        subprocess.run(["ip", "netns", "del", name], check=False)
        subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)


def receive_all(server: socket.socket, received: list[bytes]) -> None:
    """Accept one connection on ``server`` and append everything it sent until it closed."""
    connection, _ = server.accept()
    with connection:
        chunks = []
        while data := connection.recv(65536):
            chunks.append(data)
        received.append(b"".join(chunks))


def netns_snapshot(path: str) -> dict[str, str]:
    """links, addresses, routes, qdiscs and filters of the namespace as ``ip``/``tc`` print them."""
    def run(*argv: str) -> str:
        return subprocess.run(["ip", "netns", "exec", os.path.basename(path), *argv], capture_output=True,
                              text=True, check=True).stdout

    links = run("ip", "-o", "link", "show")
    names = [line.split(":")[1].strip().partition("@")[0] for line in links.splitlines()]
    snapshot = {"links": links, "addresses": run("ip", "-o", "addr", "show"), "routes": run("ip", "route", "show"),
                "qdiscs": run("tc", "qdisc", "show")}
    for name in names:
        snapshot[f"filters {name}"] = run("tc", "filter", "show", "dev", name, "ingress")
    return snapshot

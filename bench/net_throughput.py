"""TCP throughput between the host and a container: pykata (VM on the netns by tc mirred) vs runc (veth).

Usage: flock /tmp/pykata-vm.lock .venv/bin/python bench/net_throughput.py [--mib 64] [--runs 3]

Both containers sit in a network namespace wired by the real CNI ``bridge`` + ``host-local`` plugins;
the host end is the bridge's address. Each direction sends ``--mib`` MiB of zeros through busybox
``nc``: host -> container (the container listens and discards) and container -> host (the host listens
and counts). Throughput is bytes / wall time from the first connect to the last byte; medians over
``--runs``. The ratio is pykata / runc, measured in the same run on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path: the bench reuses tests.*)
from tests.agent.sandbox_support import make_bundle
from tests.cni import CniNetns, cni_netns

from kata.config import load_config
from kata.sandbox import Sandbox

CHUNK = 1 << 16
PORT = 5000


def _send(address: str, total: int, deadline: float) -> float:
    """Connect (retrying until the listener is up), send ``total`` zero bytes; seconds from connect to close."""
    while True:
        try:
            conn = socket.create_connection((address, PORT), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    started = time.monotonic()
    with conn:
        block = bytes(CHUNK)
        sent = 0
        while sent < total:
            conn.sendall(block[: min(CHUNK, total - sent)])
            sent += min(CHUNK, total - sent)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # the peer closes once it has read everything
    return time.monotonic() - started


def _receive(server: socket.socket, result: list[tuple[int, float]]) -> None:
    conn, _ = server.accept()
    started = time.monotonic()
    got = 0
    with conn:
        while data := conn.recv(1 << 20):
            got += len(data)
    result.append((got, time.monotonic() - started))


Runner = Callable[[Path, str], subprocess.Popen[bytes] | None]


def _measure(run_in_container: Callable[[list[str]], Callable[[], int]], ns: CniNetns, total: int,
             ) -> tuple[float, float]:
    """(host->container, container->host) in MiB/s."""
    wait = run_in_container(["sh", "-c", f"busybox nc -l -p {PORT} > /dev/null"])
    seconds = _send(ns.address, total, time.monotonic() + 60)
    assert wait() == 0
    inbound = total / seconds / (1 << 20)
    result: list[tuple[int, float]] = []
    with socket.create_server((ns.gateway, PORT)) as server:
        thread = threading.Thread(target=_receive, args=(server, result))
        thread.start()
        count = total // CHUNK
        wait = run_in_container(["sh", "-c", f"busybox dd if=/dev/zero bs={CHUNK} count={count} 2>/dev/null"
                                             f" | busybox nc {ns.gateway} {PORT}"])
        assert wait() == 0
        thread.join()
    got, seconds = result[0]
    assert got == count * CHUNK, got
    return inbound, got / seconds / (1 << 20)


def _pykata(tmp: Path, ns: CniNetns, total: int) -> tuple[float, float]:
    sb = Sandbox.create(load_config().config, root=tmp / "run", sandbox_id="netbench", netns=ns.path)
    counter = iter(range(100))
    try:
        def run(argv: list[str]) -> Callable[[], int]:
            n = next(counter)
            c = sb.create_container(make_bundle(tmp / f"k{n}", *argv), container_id=f"c{n}")
            c.start()
            return lambda: c.wait(timeout=600)
        return _measure(run, ns, total)
    finally:
        sb.delete()


def _runc(tmp: Path, ns: CniNetns, total: int) -> tuple[float, float]:
    counter = iter(range(100))

    def run(argv: list[str]) -> Callable[[], int]:
        n = next(counter)
        bundle = make_bundle(tmp / f"r{n}", *argv)
        spec = json.loads((bundle / "config.json").read_text())
        spec["linux"]["namespaces"] = [ns_ for ns_ in spec["linux"]["namespaces"] if ns_["type"] != "network"]
        spec["linux"]["namespaces"].append({"type": "network", "path": ns.path})
        (bundle / "config.json").write_text(json.dumps(spec))
        proc = subprocess.Popen(["runc", "--root", str(tmp / "runc"), "run", "--bundle", str(bundle), f"r{n}"],
                                stdin=subprocess.DEVNULL)
        return lambda: proc.wait(timeout=600)

    return _measure(run, ns, total)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("runc") is None:
        print("runc is not installed", file=sys.stderr)
        return 1
    total = args.mib << 20
    results: dict[str, list[tuple[float, float]]] = {"pykata (tcfilter)": [], "runc (veth)": []}
    with tempfile.TemporaryDirectory(prefix="netbench-") as tmp_dir:
        tmp = Path(tmp_dir)
        with cni_netns(tmp, name="pykatanetbench", subnet="10.88.90.0/24", bridge="pkbench0") as ns:
            for run in range(args.runs):
                for name, measure in (("pykata (tcfilter)", _pykata), ("runc (veth)", _runc)):
                    work = tmp / f"{run}-{name.split()[0]}"
                    work.mkdir()
                    results[name].append(measure(work, ns, total))
    med = {name: (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows))
           for name, rows in results.items()}
    kata, runc = med["pykata (tcfilter)"], med["runc (veth)"]
    print(f"TCP throughput, {args.mib} MiB each way, median of {args.runs} (MiB/s); {os.cpu_count()} CPUs, "
          "pykata under QEMU TCG")
    print(f"{'':20} {'host -> container':>18} {'container -> host':>18}")
    for name, (inbound, outbound) in med.items():
        print(f"{name:20} {inbound:18.1f} {outbound:18.1f}")
    print(f"{'ratio pykata/runc':20} {kata[0] / runc[0]:18.3f} {kata[1] / runc[1]:18.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The shim daemon forked by ``kata-runtime fork-server`` vs spawned: ``start`` → daemon answering, its
PSS, and (``--ctr N``) ``ctr run --rm /bin/true`` through a real containerd, runs interleaved.

Usage: .venv/bin/python bench/shim_fork_server.py [--runs 10]                    (no VM)
       flock /tmp/pykata-vm.lock .venv/bin/python bench/shim_fork_server.py --ctr 6   (boots VMs)

Uses the default socket ($KATA_ROOT or /run/kata)/fork-server.sock: no other fork server may run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import common
from engines import fork_server
from google.protobuf.empty_pb2 import Empty

from kata.oci_cli.client import TaskClient
from kata.protocols.pb import shim_task_pb2 as task
from kata.shim.address import socket_address, socket_path

SHIM = common.VENV_BIN / "containerd-shim-kata-v2"
MODES = ("server", "spawn")


def pss_kb(pid: int) -> dict[str, int]:
    """Rss, Pss, ... of ``pid`` from smaps_rollup, in kB."""
    found = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":")
        found[key] = int(value.split()[0])
    return found


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # ours when this process is a subreaper; else init reaps it
    while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z":
        time.sleep(0.01)


def daemon_ready(work: Path, name: str) -> tuple[float, int, dict[str, int]]:
    """``start`` of a new sandbox until its daemon answers Connect: seconds, the daemon's pid, its PSS."""
    bundle = work / name
    bundle.mkdir()
    (bundle / "config.json").write_text("{}")
    address = str(work / "containerd.sock")
    started = time.monotonic()
    out = subprocess.run([str(SHIM), "-namespace", "bench", "-id", name, "-address", address, "start"], cwd=bundle,
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True).stdout
    path = socket_path(out)
    assert out == socket_address(address, "bench", name)
    while True:
        try:
            with TaskClient.connect(path) as client:
                pid = client.call("Connect", task.ConnectRequest(id=name), task.ConnectResponse).shim_pid
                elapsed = time.monotonic() - started
                memory = pss_kb(pid)
                client.call("Shutdown", task.ShutdownRequest(id=name), Empty)
        except (OSError, ConnectionError):
            time.sleep(0.002)
            continue
        break
    reap(pid)
    return elapsed, pid, memory


def ctr_run(ctd: object, name: str) -> float:
    from tests.images import BUSYBOX_IMAGE

    started = time.monotonic()
    result = subprocess.run(["ctr", "--address", ctd.address, "run", "--rm", "--runtime",  # type: ignore[attr-defined]
                             "io.containerd.kata.v2", BUSYBOX_IMAGE, name, "/bin/true"], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="start → ready runs per mode (no VM)")
    parser.add_argument("--ctr", type=int, default=0, help="ctr run --rm /bin/true runs per mode (boots VMs)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fsb-", dir="/tmp"))
    config = work / "configuration.toml"
    config.write_text("[runtime]\nshim_fork_server = true\n")
    os.environ["KATA_CONF_FILE"] = str(config)  # enabled in both modes: "spawn" is the server-less fallback
    ready: dict[str, list[float]] = {mode: [] for mode in MODES}
    memory: dict[str, list[dict[str, int]]] = {mode: [] for mode in MODES}
    for run in range(args.runs):
        for mode in MODES if run % 2 else MODES[::-1]:
            with fork_server(mode == "server"):
                elapsed, _, used = daemon_ready(work, f"{mode}{run}")
            ready[mode].append(elapsed)
            memory[mode].append(used)
    for mode in MODES:
        pss = statistics.median(m["Pss"] for m in memory[mode])
        rss = statistics.median(m["Rss"] for m in memory[mode])
        print(f"{mode}: start → daemon answers: median {statistics.median(ready[mode]) * 1000:.0f} ms "
              f"(min {min(ready[mode]) * 1000:.0f}, max {max(ready[mode]) * 1000:.0f}); idle daemon "
              f"Rss {rss:.0f} kB, Pss {pss:.0f} kB")
    if args.ctr:
        ctr_runs(work, args.ctr)
    shutil.rmtree(work, ignore_errors=True)


def ctr_runs(work: Path, runs: int) -> None:
    from tests.containerd import run_containerd
    from tests.images import busybox_image

    (work / "image").mkdir()
    image = busybox_image(work / "image")
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    (work / "ctd").mkdir()
    with run_containerd(work / "ctd", path=f"{common.VENV_BIN}:{os.environ['PATH']}") as ctd:
        imported = ctd.ctr("image", "import", str(image.archive))
        assert imported.returncode == 0, imported.stderr
        for run in range(runs):
            for mode in MODES if run % 2 else MODES[::-1]:
                with fork_server(mode == "server"):
                    times[mode].append(ctr_run(ctd, f"c-{mode}{run}"))
    for mode in MODES:
        print(f"{mode}: ctr run --rm /bin/true: median {statistics.median(times[mode]):.2f} s "
              f"({' '.join(f'{t:.2f}' for t in times[mode])})")


if __name__ == "__main__":
    main()

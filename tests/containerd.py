"""A real containerd 1.6 for tests: own root, state, sockets and config in a temporary directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CONFIG = """\
version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = [{disabled}]
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
"""


@dataclass(frozen=True)
class Containerd:
    """A running containerd and how to reach it."""

    root: Path
    address: str
    ttrpc_address: str
    process: subprocess.Popen[bytes]

    def ctr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``ctr --address <ours> ARGS`` and return its result."""
        return subprocess.run(["ctr", "--address", self.address, *args], capture_output=True, text=True,
                              timeout=timeout, check=False)


def _wait_ready(daemon: Containerd, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise RuntimeError(f"containerd exited: {log.read_text()[-2000:]}")
        if os.path.exists(daemon.address) and daemon.ctr("version", timeout=10).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"containerd not ready in {timeout} s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def run_containerd(base: Path, *, cri: bool = False, path: str | None = None) -> Iterator[Containerd]:
    """Start containerd under ``base`` (short path: socket paths are limited to 108 bytes)."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.skip("containerd/ctr not installed (run make setup)")
    disabled = "" if cri else '"io.containerd.grpc.v1.cri"'
    (base / "config.toml").write_text(CONFIG.format(root=base, disabled=disabled))
    log = base / "containerd.log"
    env = {**os.environ, "PATH": path or os.environ["PATH"]}
    with log.open("wb") as out:
        process = subprocess.Popen(["containerd", "--config", str(base / "config.toml")], stdout=out,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)
    daemon = Containerd(base, f"{base}/containerd.sock", f"{base}/containerd.sock.ttrpc", process)
    try:
        _wait_ready(daemon, log)
        yield daemon
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

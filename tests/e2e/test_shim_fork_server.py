"""containerd-shim-kata-v2 with ``[runtime] shim_fork_server = true``: the sandbox daemon forked by
``kata-runtime fork-server`` under a real containerd 1.6, and the fallback when no server answers."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kata.shim.forkserver import server_socket
from tests.containerd import Containerd
from tests.e2e.test_shim_ctr import KATA, RUN_TIMEOUT, bundle_dir, ctr_run, ok, task_status, wait_for
from tests.images import BUSYBOX_IMAGE

pytestmark = pytest.mark.e2e
KATA_RUNTIME = Path(sys.executable).parent / "kata-runtime"
SOCKET = Path(server_socket())  # where the shim looks: containerd runs it with our KATA_ROOT (if any)


@dataclass
class ForkServer:
    process: subprocess.Popen[bytes]
    log: Path

    def forked(self) -> dict[str, int]:
        """Sandbox id -> pid of every daemon the server forked so far (from its log)."""
        found = {}
        for line in self.log.read_text().splitlines():
            if "forked sandbox daemon" in line and (match := re.search(r"pid=(\d+).* -id ([\w.-]+)", line)):
                found[match.group(2)] = int(match.group(1))
        return found


@pytest.fixture
def enabled_config(tmp_path: Path) -> Path:
    config = tmp_path / "configuration.toml"
    config.write_text("[runtime]\nshim_fork_server = true\n")
    return config


@pytest.fixture
def fork_server(tmp_path: Path) -> Iterator[ForkServer]:
    """``kata-runtime --debug fork-server`` on the default socket; stopped (SIGTERM) afterwards."""
    if SOCKET.exists():
        pytest.skip(f"{SOCKET} exists: another fork server may be running")
    log = tmp_path / "fork-server.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(KATA_RUNTIME), "--debug", "fork-server"], stdout=out, stderr=subprocess.STDOUT)
    server = ForkServer(process, log)
    try:
        wait_for(lambda: SOCKET.exists() or process.poll() is not None, 30, "the fork server's socket")
        assert process.poll() is None, log.read_text()
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0, log.read_text()
        assert not SOCKET.exists()
        for pid in server.forked().values():
            _reap(pid)


def _reap(pid: int, timeout: float = 30) -> None:
    """Wait for a daemon to exit; it was reparented to pytest (a subreaper), so reap it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.1)
    raise AssertionError(f"daemon {pid} did not exit")


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ")


def test_run_rm_and_exec_through_a_forked_daemon(kata_containerd: Containerd, fork_server: ForkServer,
                                                 enabled_config: Path) -> None:
    ctd = kata_containerd
    options = ("--runtime-config-path", str(enabled_config))
    ok(ctr_run(ctd, *options, BUSYBOX_IMAGE, "fs1", "/bin/true"))
    assert "fs1" in fork_server.forked()
    _reap(fork_server.forked()["fs1"])

    ok(ctd.ctr("run", "-d", "--runtime", KATA, *options, BUSYBOX_IMAGE, "fs2", "sleep", "1000",
               timeout=RUN_TIMEOUT))
    daemon = int((bundle_dir(ctd, "fs2") / "shim.pid").read_text())
    assert fork_server.forked()["fs2"] == daemon
    assert "fork-server" in _cmdline(daemon)  # a fork of the server, not a fresh containerd-shim-kata-v2
    assert Path(f"/proc/{daemon}/comm").read_text().strip() == "kata-shim"
    assert os.getsid(daemon) == daemon
    execd = ctd.ctr("task", "exec", "--exec-id", "e1", "fs2", "sh", "-c", "echo from-exec; exit 5")
    assert (execd.returncode, execd.stdout) == (5, "from-exec\n"), execd.stderr
    ok(ctd.ctr("task", "kill", "-s", "SIGKILL", "fs2"))
    wait_for(lambda: task_status(ctd, "fs2") == "STOPPED", 30, "fs2 to stop")
    ok(ctd.ctr("task", "delete", "fs2"))
    ok(ctd.ctr("container", "rm", "fs2"))
    _reap(daemon)
    assert not Path("/run/kata/fs2").exists()


def test_without_a_server_the_daemon_is_spawned(kata_containerd: Containerd, enabled_config: Path,
                                                tmp_path: Path) -> None:
    """Enabled, but only a dead server's socket is there: ``start`` spawns the daemon as usual."""
    ctd = kata_containerd
    if SOCKET.exists():
        pytest.skip(f"{SOCKET} exists: another fork server may be running")
    SOCKET.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as stale:
        stale.bind(str(SOCKET))  # bound, never listening: connecting is refused
    try:
        ok(ctd.ctr("run", "-d", "--runtime", KATA, "--runtime-config-path", str(enabled_config), BUSYBOX_IMAGE,
                   "fb1", "sleep", "1000", timeout=RUN_TIMEOUT))
        daemon = int((bundle_dir(ctd, "fb1") / "shim.pid").read_text())
        assert "containerd-shim-kata-v2" in _cmdline(daemon)
        ok(ctd.ctr("task", "kill", "-s", "SIGKILL", "fb1"))
        wait_for(lambda: task_status(ctd, "fb1") == "STOPPED", 30, "fb1 to stop")
        ok(ctd.ctr("task", "delete", "fb1"))
        ok(ctd.ctr("container", "rm", "fb1"))
        _reap(daemon)
    finally:
        SOCKET.unlink()

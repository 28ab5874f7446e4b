"""kata-runtime as an OCI runtime (runc's CLI) on a busybox bundle: every container in its own QEMU guest,
its process's exit status through the per-process proxy (pytest is a child subreaper: proxies re-parent
to it, so it can wait for them as conmon does)."""

from __future__ import annotations

import array
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.images import BUSYBOX, _layer
from tests.terminal import read_until

pytestmark = [pytest.mark.vm, pytest.mark.e2e]
KATA = str(Path(sys.executable).parent / "kata-runtime")
GUEST_KERNEL = Path("/var/cache/pykata/guest/kernel.json")
TIMEOUT = 120


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox root filesystem (the test image's layer, unpacked)."""
    path = tmp_path_factory.mktemp("rootfs") / "rootfs"
    with tarfile.open(fileobj=io.BytesIO(_layer(BUSYBOX))) as tar:
        tar.extractall(path, filter="tar")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """--root of this test; whatever a failed test left there is deleted."""
    path = tmp_path / "state"
    yield path
    for container in kata(path, "list", "-q").stdout.split():
        kata(path, "delete", "--force", container)


def kata(root: Path, *args: str, timeout: float = TIMEOUT, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """kata-runtime --root ROOT ARGS (stdin /dev/null unless given)."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("capture_output", True)
    result: subprocess.CompletedProcess[str] = subprocess.run([KATA, "--root", str(root), *args], text=True,
                                                              timeout=timeout, check=False, **kwargs)
    return result


def kata_leaving_a_proxy(root: Path, *args: str, output: Path) -> subprocess.CompletedProcess[str]:
    """kata-runtime create / run -d / exec -d: the proxy keeps the stdio it inherited, so that is a file
    (a pipe would not reach EOF before the container's process ends)."""
    with output.open("w") as fh:
        result = kata(root, *args, capture_output=False, stdout=fh, stderr=subprocess.STDOUT)
    return subprocess.CompletedProcess(result.args, result.returncode, "", output.read_text())


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: rc {result.returncode}: {result.stderr}"
    return result.stdout


def make_bundle(directory: Path, rootfs: Path, args: list[str], *, terminal: bool = False) -> Path:
    """A bundle whose config.json is `kata-runtime spec`'s with these args."""
    directory.mkdir()
    ok(subprocess.run([KATA, "spec", "--bundle", str(directory)], capture_output=True, text=True, check=False))
    config = json.loads((directory / "config.json").read_text())
    config["root"] = {"path": str(rootfs), "readonly": False}
    config["process"]["args"] = args
    config["process"]["terminal"] = terminal
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def wait_pid(pid: int, timeout: float = 30) -> int:
    """The exit code of our (adopted) child ``pid``."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        assert time.monotonic() < deadline, f"proxy {pid} did not exit"
        time.sleep(0.05)


def state(root: Path, container: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(ok(kata(root, "state", container)))
    return result


def guest_kernel() -> str:
    release: str = json.loads(GUEST_KERNEL.read_text())["release"]
    return release


def test_lifecycle_exec_and_exit_status_through_the_proxy(tmp_path: Path, rootfs: Path, root: Path) -> None:
    bundle = make_bundle(tmp_path / "b", rootfs, ["sh", "-c", "trap 'exit 42' TERM; while :; do sleep 0.1; done"])
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    ok(kata_leaving_a_proxy(root, "create", "--bundle", str(bundle), "--pid-file", str(pid_file), "c1",
                            output=tmp_path / "c1.out"))
    print(f"create: {time.monotonic() - started:.2f} s")
    proxy = int(pid_file.read_text())
    created = state(root, "c1")
    assert {k: created[k] for k in ("ociVersion", "id", "pid", "status", "bundle")} == {
        "ociVersion": "1.1.0", "id": "c1", "pid": proxy, "status": "created", "bundle": str(bundle)}
    ok(kata(root, "start", "c1"))
    assert state(root, "c1")["status"] == "running"
    assert "cannot start an already running container" in kata(root, "start", "c1").stderr

    execd = kata(root, "exec", "c1", "sh", "-c", "echo in-exec; uname -r; echo oops >&2; exit 5")
    assert (execd.returncode, execd.stdout, execd.stderr) == (5, f"in-exec\n{guest_kernel()}\n", "oops\n")
    exec_pid_file = tmp_path / "exec.pid"
    ok(kata_leaving_a_proxy(root, "exec", "-d", "--pid-file", str(exec_pid_file), "c1", "sh", "-c",
                            "echo detached; sleep 0.5; exit 9", output=tmp_path / "exec.out"))
    assert wait_pid(int(exec_pid_file.read_text())) == 9
    assert (tmp_path / "exec.out").read_text() == "detached\n"
    process = tmp_path / "process.json"
    process.write_text(json.dumps({"args": ["sh", "-c", "echo $FOO"], "cwd": "/", "env": ["FOO=bar"],
                                   "user": {"uid": 0, "gid": 0}}))
    assert ok(kata(root, "exec", "--process", str(process), "c1")) == "bar\n"

    ok(kata(root, "pause", "c1"))
    assert state(root, "c1")["status"] == "paused"
    ok(kata(root, "resume", "c1"))
    assert json.loads(ok(kata(root, "ps", "--format", "json", "c1")))
    ok(kata(root, "update", "--memory", "256m", "--pids-limit", "100", "c1"))
    stats = json.loads(ok(kata(root, "events", "--stats", "c1")))
    assert stats["data"]["pids"]["limit"] == 100
    assert stats["type"] == "stats" and stats["data"]["pids"]["current"] >= 1
    listing = json.loads(ok(kata(root, "list", "--format", "json")))
    assert [(c["id"], c["status"], c["owner"]) for c in listing] == [("c1", "running", "root")]
    assert "cannot delete container c1 that is not stopped" in kata(root, "delete", "c1").stderr

    ok(kata(root, "kill", "c1", "TERM"))
    assert wait_pid(proxy) == 42
    assert (tmp_path / "c1.out").read_text() == ""
    stopped = state(root, "c1")
    assert (stopped["status"], stopped["pid"]) == ("stopped", 0)
    assert kata(root, "kill", "c1", "9").stderr.strip().endswith("container not running")
    ok(kata(root, "delete", "c1"))
    assert not (root / "c1").exists() and not (root / ".oci").exists()
    missing = kata(root, "state", "c1")
    assert (missing.returncode, missing.stderr) == (1, "kata-runtime: error: container c1 does not exist\n")
    ok(kata(root, "delete", "--force", "c1"))


def test_run_relays_stdio_and_returns_the_exit_status(tmp_path: Path, rootfs: Path, root: Path) -> None:
    bundle = make_bundle(tmp_path / "b", rootfs, ["sh", "-c", "read line; echo got $line; echo err >&2; exit 3"])
    result = kata(root, "run", "--bundle", str(bundle), "r1", input="hello\n", stdin=None)
    assert (result.returncode, result.stdout, result.stderr) == (3, "got hello\n", "err\n")
    assert kata(root, "list", "-q").stdout == ""


def test_sigkill_of_the_container_gives_137(tmp_path: Path, rootfs: Path, root: Path) -> None:
    bundle = make_bundle(tmp_path / "b", rootfs, ["sleep", "1000"])
    pid_file = tmp_path / "pid"
    ok(kata_leaving_a_proxy(root, "run", "-d", "--bundle", str(bundle), "--pid-file", str(pid_file), "k1",
                            output=tmp_path / "k1.out"))
    ok(kata(root, "kill", "--all", "k1", "KILL"))
    assert wait_pid(int(pid_file.read_text())) == 137
    ok(kata(root, "delete", "k1"))


def _receive_master(listener: socket.socket) -> tuple[int, str]:
    connection, _ = listener.accept()
    with connection:
        fds = array.array("i")
        data, ancillary, _, _ = connection.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:fds.itemsize])
    assert len(fds) == 1
    return fds[0], data.decode()


def test_console_socket_gets_the_pty_master(tmp_path: Path, rootfs: Path, root: Path) -> None:
    bundle = make_bundle(tmp_path / "b", rootfs, ["sh"], terminal=True)
    console = tmp_path / "console.sock"
    pid_file = tmp_path / "pid"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(console))
        listener.listen(1)
        creating = subprocess.Popen([KATA, "--root", str(root), "create", "--bundle", str(bundle), "--console-socket",
                                     str(console), "--pid-file", str(pid_file), "t1"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        listener.settimeout(TIMEOUT)
        master, name = _receive_master(listener)
    assert creating.wait(TIMEOUT) == 0
    assert name.startswith("/dev/pts/")
    try:
        ok(kata(root, "start", "t1"))
        os.write(master, b"test -t 0 && echo on-a-tty-$((6*7)); exit 3\n")
        output = read_until(master, b"on-a-tty-42\r\n")
        assert b"on-a-tty-42\r\n" in output, output
        assert wait_pid(int(pid_file.read_text())) == 3
    finally:
        os.close(master)
    ok(kata(root, "delete", "t1"))


def test_delete_after_the_daemon_was_killed(tmp_path: Path, rootfs: Path, root: Path) -> None:
    """The sandbox daemon dies: the proxy ends with 255, the container reads as stopped, and delete still
    stops the VM and removes every state dir (from the sandbox's state.json)."""
    bundle = make_bundle(tmp_path / "b", rootfs, ["sleep", "1000"])
    pid_file = tmp_path / "pid"
    ok(kata_leaving_a_proxy(root, "run", "-d", "--bundle", str(bundle), "--pid-file", str(pid_file), "z1",
                            output=tmp_path / "z1.out"))
    record = json.loads((root / ".oci" / "z1" / "state.json").read_text())
    os.kill(record["daemon_pid"], signal.SIGKILL)
    assert wait_pid(int(pid_file.read_text())) == 255
    assert state(root, "z1")["status"] == "stopped"
    ok(kata(root, "delete", "z1"))
    assert not (Path(record["sandbox_root"]) / "z1").exists() and not (root / ".oci").exists()

"""The daemon fork server: request encoding and validation (pure), and a real server on a temporary socket
forking real daemons (no VM: the daemon only serves its socket until SIGTERM)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kata.shim.bootstrap import fork_server_socket
from kata.shim.forkserver import (
    ForkRequest,
    ForkRequestError,
    ForkServerError,
    ForkServerUnavailableError,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    fork_daemon,
    server_socket,
    try_fork_daemon,
)

FLAGS = ("-namespace", "default", "-id", "c1", "-address", "/run/containerd/containerd.sock",
         "-publish-binary", "/usr/bin/containerd", "-debug", "-config", "/etc/kata/configuration.toml")


def _raw(**changes: object) -> bytes:
    raw: dict[str, object] = {"version": 1, "argv": list(FLAGS), "env": {"A": "1"}, "cwd": "/tmp", "log_fd": False}
    raw.update(changes)
    return json.dumps({k: v for k, v in raw.items() if v is not None}).encode()


def test_a_request_round_trips() -> None:
    request = ForkRequest(argv=FLAGS, env={"TTRPC_ADDRESS": "/x.ttrpc"}, cwd="/b", log_fd=True)
    assert decode_request(encode_request(request), 2) == request
    assert request.fd_count == 2 and ForkRequest(argv=FLAGS).fd_count == 1


@pytest.mark.parametrize(("data", "fds", "words"), [
    (b"not json", 1, "not JSON"),
    (_raw(version=2), 1, "version 1"),
    (_raw(extra=1), 1, "unknown request fields: extra"),
    (_raw(cwd="relative"), 1, "absolute"),
    (_raw(log_fd="yes"), 1, "boolean"),
    (_raw(argv="-id c1"), 1, "list of strings"),
    (_raw(argv=["-namespace", "x", "-id", "a\0b"]), 1, "NUL"),
    (_raw(argv=[*FLAGS, "-socket", "/tmp/s"]), 1, "not allowed for a forked daemon: -socket"),
    (_raw(argv=[*FLAGS, "--bundle=/b"]), 1, "not allowed"),
    (_raw(argv=["-v"]), 1, "not allowed"),
    (_raw(argv=[*FLAGS, "start"]), 1, "no verb"),
    (_raw(argv=[*FLAGS, "delete"]), 1, "no verb"),
    (_raw(argv=["-id", "c1"]), 1, "-namespace"),
    (_raw(argv=["-namespace", "default", "-id", "../x"]), 1, "valid -id"),
    (_raw(argv=["-namespace", "default", "-id"]), 1, "bad daemon flags"),
    (_raw(env={"A=B": "1"}), 1, "environment variable"),
    (_raw(env={"A": 1}), 1, "environment variable"),
    (_raw(env=["A=1"]), 1, "env must be"),
    (_raw(), 2, "expected 1 descriptors, got 2"),
    (_raw(log_fd=True), 1, "expected 2 descriptors, got 1"),
])
def test_bad_requests_are_refused_with_one_clear_error(data: bytes, fds: int, words: str) -> None:
    with pytest.raises(ForkRequestError, match=words.replace("(", r"\(").replace(")", r"\)")):
        decode_request(data, fds)


def test_replies() -> None:
    assert decode_reply(encode_reply(pid=42)) == 42
    with pytest.raises(ForkServerUnavailableError, match="refused: bad flags"):
        decode_reply(encode_reply(error="bad flags"))
    for garbled in (b"", b"{}", b'{"pid": 0}', b"\xff"):
        with pytest.raises(ForkServerError) as caught:
            decode_reply(garbled)
        assert not isinstance(caught.value, ForkServerUnavailableError)  # unknown: the caller must not spawn


def test_the_shim_looks_where_the_server_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KATA_ROOT", raising=False)
    assert fork_server_socket() == server_socket() == "/run/kata/fork-server.sock"
    monkeypatch.setenv("KATA_ROOT", "/tmp/k")
    assert fork_server_socket() == server_socket() == "/tmp/k/fork-server.sock"


def test_no_socket_or_disabled_means_spawn(tmp_path: Path) -> None:
    request = ForkRequest(argv=FLAGS)
    assert try_fork_daemon(request, 0, root=str(tmp_path), config_path=None) == 0  # no socket: one stat
    config = tmp_path / "configuration.toml"
    config.write_text("[runtime]\nshim_fork_server = true\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as stale:
        stale.bind(server_socket(str(tmp_path)))  # a dead server's socket: connection refused
    assert try_fork_daemon(request, 0, root=str(tmp_path), config_path=str(config)) == 0


# a real server


def _wait(predicate: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    home = Path(tempfile.mkdtemp(prefix="pykata-fs-", dir="/tmp"))  # reachable by another uid (the peer test)
    home.chmod(0o755)
    path = str(home / "fork-server.sock")
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "kata.cli.main", "--debug", "fork-server", "--socket", path],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: os.path.exists(path) or process.poll() is not None)
        assert process.poll() is None, log.read_text()
        assert os.stat(path).st_mode & 0o777 == 0o600
        yield path, process, log
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0, log.read_text()
    assert not os.path.exists(path)
    home.rmdir()


def _listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(8)
    return sock


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def _reap(pid: int) -> int:
    """The daemon was reparented to pytest (a subreaper): wait for it here."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    raise AssertionError(f"{pid} did not exit")


def test_the_server_forks_a_daemon_that_serves_the_socket(server: tuple[str, subprocess.Popen[bytes], Path],
                                                          tmp_path: Path) -> None:
    path, process, log = server
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    daemon_log = tmp_path / "daemon.log"
    with _listener(bundle / "d.sock") as listener, daemon_log.open("ab") as out:
        request = ForkRequest(argv=("-namespace", "default", "-id", "c1", "-debug"), env={"PATH": os.environ["PATH"]},
                              cwd=str(bundle), log_fd=True)
        pid = fork_daemon(path, request, listener.fileno(), out.fileno())
    stat = _stat(pid)
    assert int(stat[1]) != process.pid and int(stat[3]) == pid  # reparented; its own session
    assert os.readlink(f"/proc/{pid}/cwd") == str(bundle)
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{pid}/fd/1") == os.readlink(f"/proc/{pid}/fd/2") == str(daemon_log)
    assert os.readlink(f"/proc/{pid}/fd/3").startswith("socket:")
    _wait(lambda: "shim serving" in daemon_log.read_text())
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(bundle / "d.sock"))
    os.kill(pid, signal.SIGTERM)
    assert _reap(pid) == 0
    assert not (bundle / "d.sock").exists()  # the daemon unlinked its socket on the way out
    text = daemon_log.read_text()
    assert "shim exiting" in text and "modules imported after the fork" in text
    assert f"pid={pid}" in log.read_text() and "forked sandbox daemon" in log.read_text()


def test_the_server_refuses_bad_requests_and_foreign_users(server: tuple[str, subprocess.Popen[bytes], Path],
                                                           tmp_path: Path) -> None:
    path, process, _ = server
    with _listener(tmp_path / "d.sock") as listener:
        bad = ForkRequest(argv=("-namespace", "default", "-id", "c1", "-socket", "/x"), cwd=str(tmp_path))
        with pytest.raises(ForkServerUnavailableError, match="-socket"):
            fork_daemon(path, bad, listener.fileno())
        missing = ForkRequest(argv=("-namespace", "default", "-id", "c1"), cwd=str(tmp_path / "nope"))
        with pytest.raises(ForkServerUnavailableError, match="not a directory"):
            fork_daemon(path, missing, listener.fileno())
    read, write = os.pipe()
    try:
        good = ForkRequest(argv=("-namespace", "default", "-id", "c1"), cwd=str(tmp_path))
        with pytest.raises(ForkServerUnavailableError, match="not a socket"):
            fork_daemon(path, good, read)
    finally:
        os.close(read)
        os.close(write)
    os.chmod(path, 0o666)  # let another uid reach the peer check itself
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as raw:
                raw.settimeout(10)
                raw.connect(path)  # refused before it reads anything
                code = 0 if b"another user" in raw.recv(4096) else 2
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0
    assert process.poll() is None  # still serving


def test_a_second_server_does_not_take_a_live_socket(server: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    path, _, _ = server
    second = subprocess.run([sys.executable, "-m", "kata.cli.main", "fork-server", "--socket", path],
                            capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 1 and "already listens" in second.stderr

"""``start`` for a pod's later container (no daemon) and ``delete`` with nothing left to clean."""

from __future__ import annotations

import io
import json
import os
import socket
import sys
from pathlib import Path

import pytest
from google.protobuf import any_pb2

from kata.protocols.pb import runtimeoptions_pb2, shim_task_pb2
from kata.sandbox import AsyncSandbox, SandboxState
from kata.shim import bootstrap
from kata.shim.address import socket_address
from kata.shim.bootstrap import _listen, can_connect
from kata.shim.main import main

CRI = "io.kubernetes.cri"


def bundle(tmp_path: Path, annotations: dict[str, str]) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "annotations": annotations}))
    return tmp_path


def stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_start_of_a_pod_container_answers_the_sandboxs_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    directory = bundle(tmp_path / "app", {f"{CRI}.container-type": "container", f"{CRI}.sandbox-id": "pod"})
    monkeypatch.chdir(directory)
    stdin(monkeypatch, b"")
    assert main(["-namespace", "k8s.io", "-address", "/run/c.sock", "-publish-binary", "/bin/c", "-id", "app",
                 "start"]) == 0
    expected = socket_address("/run/c.sock", "k8s.io", "pod")
    assert capsys.readouterr() == (expected, "")  # stdout + stderr are the address, nothing else
    assert (directory / "address").read_text() == expected
    assert not (directory / "shim.pid").exists()


def test_start_fails_on_a_configuration_that_does_not_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(bundle(tmp_path, {}))
    options = runtimeoptions_pb2.Options(config_path=str(tmp_path / "missing.toml"))
    stdin(monkeypatch, any_pb2.Any(type_url="runtimeoptions.v1.Options",
                                   value=options.SerializeToString()).SerializeToString())
    socket_file = tmp_path / "shim.sock"
    spawned: list[int] = []

    def spawn(argv: list[str], listener: socket.socket) -> int:
        spawned.append(real_spawn(["/bin/sleep", "60"], listener))  # the daemon, spawned before the check
        return spawned[-1]

    real_spawn = bootstrap._spawn_daemon
    monkeypatch.setattr(bootstrap, "socket_path", lambda address: str(socket_file))
    monkeypatch.setattr(bootstrap, "_spawn_daemon", spawn)
    assert main(["-namespace", "default", "-address", "/run/c.sock", "-id", "c1", "start"]) == 1
    assert "missing.toml" in capsys.readouterr().err
    assert spawned and not socket_file.exists() and not (tmp_path / "address").exists()
    with pytest.raises(ChildProcessError):  # killed and reaped
        os.waitpid(spawned[0], os.WNOHANG)


def test_delete_with_nothing_left_prints_a_delete_response(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    monkeypatch.setenv("KATA_ROOT", str(tmp_path / "run"))
    directory = bundle(tmp_path / "gone", {})
    assert main(["-namespace", "default", "-address", str(tmp_path / "c.sock"), "-id", "gone", "-bundle",
                 str(directory), "delete"]) == 0
    response = shim_task_pb2.DeleteResponse.FromString(capsysbinary.readouterr().out)
    assert response.exit_status == 137 and response.exited_at.seconds > 0


class FakeLoaded:
    """What delete's cleanup uses of a loaded sandbox, recording the calls."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.state = SandboxState.RUNNING

    async def delete(self, *, force: bool = False) -> None:  # the sandbox's, or (force) a container's
        self.calls.append("force delete container" if force else "delete sandbox")

    def container(self, container_id: str) -> FakeLoaded:
        self.calls.append(f"container {container_id}")
        return self

    async def detach(self) -> bool:
        self.calls.append("detach")
        return True


@pytest.mark.parametrize(("annotations", "expected"), [
    ({}, ["load sb connect=False", "delete sandbox"]),
    ({f"{CRI}.container-type": "container", f"{CRI}.sandbox-id": "sb"},
     ["load sb connect=True", "container app", "force delete container", "detach"]),
])
def test_delete_dials_the_agent_only_for_a_pods_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsysbinary: pytest.CaptureFixture[bytes],
                                                          annotations: dict[str, str], expected: list[str]) -> None:
    calls: list[str] = []

    async def load(sandbox_id: str, *, dial_timeout: float, connect: bool = True) -> FakeLoaded:
        assert 0 < dial_timeout < 5  # containerd gives `delete` 5 s in all
        calls.append(f"load {sandbox_id} connect={connect}")
        return FakeLoaded(calls)

    monkeypatch.setattr(AsyncSandbox, "load", load)
    monkeypatch.setenv("KATA_ROOT", str(tmp_path / "run"))
    (tmp_path / "run" / "sb").mkdir(parents=True)  # the dead daemon's sandbox left its state dir
    container_id = "app" if annotations else "sb"
    directory = bundle(tmp_path / container_id, annotations)
    assert main(["-namespace", "default", "-address", str(tmp_path / "c.sock"), "-id", container_id, "-bundle",
                 str(directory), "delete"]) == 0
    assert calls == expected
    assert shim_task_pb2.DeleteResponse.FromString(capsysbinary.readouterr().out).exit_status == 137


def test_listen_replaces_a_dead_daemons_socket_and_defers_to_a_live_one(tmp_path: Path) -> None:
    path = str(tmp_path / "s" / "shim.sock")
    first = _listen(path)
    assert first is not None and can_connect(path)
    assert _listen(path) is None  # a live daemon serves it
    first.close()  # the daemon died; its socket file stays
    assert not can_connect(path)
    second = _listen(path)
    assert second is not None and can_connect(path)
    second.close()
    with socket.socket(socket.AF_UNIX) as probe:
        assert probe.connect_ex(path) != 0

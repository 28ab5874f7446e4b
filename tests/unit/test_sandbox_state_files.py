"""state.json and timeline.json: atomic writes, round trips, malformed files, the timeline table and verb."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kata.sandbox import PHASES, SandboxError, SandboxNotFoundError, Timeline, format_timeline, load_timeline
from kata.sandbox.paths import SandboxPaths, check_id, resolve_root
from kata.sandbox.persist import read_json, write_json
from kata.sandbox.records import ContainerRecord, ProcessRef, SandboxRecord, VmRecord
from kata.sandbox.timeline import append_phase

BIN = Path(sys.executable).parent
VM = VmRecord("qemu", (ProcessRef(100, 5), ProcessRef(101, 6)), "unix:///run/kata/s/agent.sock",
              qmp_socket="/run/kata/s/qmp.sock", console_log="/run/kata/s/console.log")


def test_records_round_trip_through_json() -> None:
    sandbox = SandboxRecord("s", "running", 1.5, VM, "virtio-fs", "/run/kata-containers", hostname="pod",
                            dial_timeout=7.0, guest_seccomp=True)
    assert SandboxRecord.from_json(json.loads(json.dumps(sandbox.to_json()))) == sandbox
    container = ContainerRecord("c", "s", "/b", "/b/rootfs", "stopped", 2.5, terminal=True,
                                shares=("/run/kata/s/shared/c/rootfs",), exit_status=3, annotations={"a": "b"})
    assert ContainerRecord.from_json(json.loads(json.dumps(container.to_json()))) == container


@pytest.mark.parametrize(("data", "message"), [
    ({"version": 1, "id": "s"}, "malformed sandbox state .KeyError"),
    ({"version": 9}, "state version 9, expected 1"),
    ([], "malformed sandbox state .TypeError: not a JSON object"),
    ({**SandboxRecord("s", "running", 1, VM, "virtio-fs", "/g").to_json(), "state": "dancing"},
     "ValueError: 'dancing' is not a valid SandboxState"),
])
def test_malformed_state_is_a_sandbox_error(data: object, message: str) -> None:
    with pytest.raises(SandboxError, match=message):
        SandboxRecord.from_json(data)


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        for i in range(50):
            write_json(target, {"writer": n, "i": i, "pad": "x" * 4096})

    def reader() -> None:
        for _ in range(200):
            try:
                data = read_json(target)
                assert data["pad"] == "x" * 4096
            except SandboxNotFoundError:
                pass
            except BaseException as exc:
                errors.append(exc)
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)] + [threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(SandboxNotFoundError):
        read_json(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SandboxError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(SandboxError, match=r"write .*: No such file"):
        write_json(tmp_path / "missing" / "x.json", {})


def test_paths_ids_and_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    paths = SandboxPaths(Path("/run/kata"), "s1")
    assert (str(paths.state_file), str(paths.shared), str(paths.container_state("c"))) == (
        "/run/kata/s1/state.json", "/run/kata/s1/shared", "/run/kata/s1/containers/c/state.json")
    for bad in ("", "../x", "a/b", "-x", "x" * 129):
        with pytest.raises(SandboxError, match="bad sandbox id"):
            check_id("sandbox", bad)
    monkeypatch.setenv("KATA_ROOT", str(tmp_path))
    assert resolve_root() == tmp_path and resolve_root("/other") == Path("/other")
    monkeypatch.delenv("KATA_ROOT")
    assert resolve_root() == Path("/run/kata")


def test_timeline_round_trip_append_and_table(tmp_path: Path) -> None:
    timeline = Timeline("sb", origin=100.0, wall_origin=0.0)
    for offset, name in enumerate(PHASES[:4]):
        timeline = timeline.mark(name, at=100.0 + 0.5 * (offset + 1))
    path = tmp_path / "timeline.json"
    write_json(path, timeline.to_json())
    append_phase(path, PHASES[4], "c1", at=103.0)
    loaded = append_phase(path, PHASES[5], "c1", at=103.25)
    assert load_timeline(path) == loaded
    assert loaded.elapsed("container started", "c1") == pytest.approx(3.25)
    assert loaded.elapsed("container started") is None
    assert json.loads(path.read_text())["phases"][1] == {"name": "VM spawned", "container": "", "monotonic": 101.0,
                                                          "seconds": 1.0}
    table = format_timeline(loaded).splitlines()
    assert table[0].startswith("sandbox sb (create called ")
    assert table[1:] == [
        "PHASE              CONTAINER  AT (ms)  STEP (ms)",
        "config loaded                   500.0      500.0",
        "VM spawned                     1000.0      500.0",
        "agent reachable                1500.0      500.0",
        "sandbox created                2000.0      500.0",
        "container created  c1          3000.0     1000.0",
        "container started  c1          3250.0      250.0",
    ]
    with pytest.raises(SandboxError, match="malformed timeline"):
        Timeline.from_json({"phases": [{}]})


def test_timeline_verb(tmp_path: Path) -> None:
    (tmp_path / "sb").mkdir()
    timeline = Timeline("sb", 10.0, 0.0).mark("config loaded", at=10.002)
    write_json(tmp_path / "sb" / "timeline.json", timeline.to_json())
    proc = subprocess.run([str(BIN / "kata-runtime"), "--root", str(tmp_path), "timeline", "sb"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].split() == ["config", "loaded", "2.0", "2.0"]
    as_json = subprocess.run([str(BIN / "kata-runtime"), "--root", str(tmp_path), "timeline", "--json", "sb"],
                             capture_output=True, text=True, check=False)
    assert json.loads(as_json.stdout)["phases"][0]["name"] == "config loaded"
    missing = subprocess.run([str(BIN / "kata-runtime"), "--root", str(tmp_path), "timeline", "nope"],
                             capture_output=True, text=True, check=False, env={**os.environ})
    assert missing.returncode == 1
    assert missing.stderr.startswith("kata-runtime: error: ") and "nope/timeline.json" in missing.stderr

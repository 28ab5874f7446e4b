"""state.json round trip: another process loads the sandbox, reconnects to its agent, execs, kills, deletes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kata.errors import AgentError, StateError
from kata.sandbox import ContainerState, OutputBuffer, Sandbox, SandboxNotFoundError, SandboxState
from kata.sandbox.procs import is_alive
from kata.sandbox.records import ProcessRef
from tests.agent.sandbox_support import descendants, hostmode_setup, reap
from tests.agent.support import BUSYBOX

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not BUSYBOX.exists(), reason="needs root and busybox")
REPO = Path(__file__).resolve().parents[2]

CREATOR = """
import json, sys
from pathlib import Path
from kata.sandbox import Sandbox
from tests.agent.sandbox_support import hostmode_setup, make_bundle
tmp = Path(sys.argv[1])
setup = hostmode_setup(tmp)
sb = Sandbox.create(setup.config, root=setup.root, guest=setup.layout, sandbox_id="sb", hostname="pod")
c = sb.create_container(make_bundle(tmp / "b", "sleep", "1000"), container_id="c")
c.start()
print(json.dumps({"survives": sb.detach(), "pids": list(sb.pids)}))
"""


def create_in_another_process(tmp_path: Path) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", CREATOR, str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO, timeout=60, check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    answer: dict[str, object] = json.loads(proc.stdout)
    return answer


def test_another_process_loads_execs_kills_and_deletes(tmp_path: Path) -> None:
    created = create_in_another_process(tmp_path)
    assert created["survives"] is True
    root = tmp_path / "run"
    state = json.loads((root / "sb" / "state.json").read_text())
    assert (state["state"], state["hostname"], state["vm"]["hypervisor"]) == ("running", "pod", "hostmode")
    [agent] = state["vm"]["processes"]
    assert is_alive(ProcessRef(agent["pid"], agent["start_time"]))
    assert agent["pid"] != os.getpid() and os.getppid() != agent["pid"]
    sb = Sandbox.load("sb", root=root)
    try:
        assert sb.state is SandboxState.RUNNING
        c = sb.container("c")
        assert (c.state, c.record.bundle) == (ContainerState.RUNNING, str(tmp_path / "b"))
        out = OutputBuffer()
        assert c.exec(["sh", "-c", "echo $$ from exec"], stdout=out).wait() == 0
        assert out.getvalue().endswith(b" from exec\n")
        with pytest.raises(StateError, match="cannot start while running"):
            c.start()
        c.kill(signal.SIGKILL)
        assert c.wait() == 137
        assert json.loads((root / "sb/containers/c/state.json").read_text())["state"] == "stopped"
    finally:
        sb.delete()
        reap([agent["pid"]])
    assert not (root / "sb").exists()
    assert not is_alive(ProcessRef(agent["pid"], agent["start_time"]))


def test_a_sandbox_whose_vm_died_loads_as_lost_and_deletes_cleanly(tmp_path: Path) -> None:
    create_in_another_process(tmp_path)
    root = tmp_path / "run"
    [agent] = json.loads((root / "sb" / "state.json").read_text())["vm"]["processes"]
    doomed = [*descendants(agent["pid"]), agent["pid"]]  # a dying VM takes its containers along
    for pid in doomed:
        os.kill(pid, signal.SIGKILL)
    reap(doomed)
    sb = Sandbox.load("sb", root=root)
    assert sb.state is SandboxState.LOST
    with pytest.raises(StateError, match="lost"):
        sb.container("c").exec(["true"])
    sb.delete()
    assert not (root / "sb").exists()


def test_load_without_connecting_deletes_host_side_and_vm(tmp_path: Path) -> None:
    create_in_another_process(tmp_path)
    root = tmp_path / "run"
    [agent] = json.loads((root / "sb" / "state.json").read_text())["vm"]["processes"]
    containers = descendants(agent["pid"])  # a real VM takes them along when it stops; host mode does not
    sb = Sandbox.load("sb", root=root, connect=False)
    try:
        assert sb.state is SandboxState.RUNNING and sb.container("c").state is ContainerState.RUNNING
        with pytest.raises(StateError, match="no agent connection"):
            sb.container("c").exec(["true"])
    finally:
        sb.delete()
        for pid in containers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        reap([agent["pid"], *containers])
    assert not (root / "sb").exists()
    assert not is_alive(ProcessRef(agent["pid"], agent["start_time"]))


def test_a_dial_timeout_that_is_not_positive_is_an_agent_error(tmp_path: Path) -> None:
    for timeout in (0, -1.0):
        with pytest.raises(AgentError, match="dial_timeout must be positive"):
            Sandbox.load("sb", root=tmp_path, dial_timeout=timeout)


def test_detach_in_process_then_load(tmp_path: Path) -> None:
    setup = hostmode_setup(tmp_path)
    sb = Sandbox.create(setup.config, root=setup.root, guest=setup.layout, sandbox_id="sb")
    assert sb.detach() is True
    assert sb.state is SandboxState.DETACHED
    with pytest.raises(StateError, match="detached"):
        sb.inner.agent_for("call the agent")
    loaded = Sandbox.load("sb", root=setup.root)
    with loaded:
        assert loaded.state is SandboxState.RUNNING and not loaded.containers
    assert not (setup.root / "sb").exists()
    reap(loaded.pids)


def test_loading_an_unknown_sandbox(tmp_path: Path) -> None:
    with pytest.raises(SandboxNotFoundError, match="sandbox nope does not exist"):
        Sandbox.load("nope", root=tmp_path)

"""Sandbox and containers end to end against the host-mode agent: output, pid namespaces, shares, exec, tty."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest

from kata.errors import RpcError, StateError
from kata.oci import CPU, Resources
from kata.oci.model import Mount
from kata.sandbox import (
    PHASES,
    PIPE,
    AsyncSandbox,
    ContainerState,
    OutputBuffer,
    Sandbox,
    SandboxError,
    SandboxLostError,
    SandboxState,
)
from tests.agent.sandbox_support import HostModeSetup, hostmode_setup, make_bundle
from tests.agent.support import BUSYBOX

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not BUSYBOX.exists(), reason="needs root and busybox")


@pytest.fixture
def setup(tmp_path: Path) -> HostModeSetup:
    return hostmode_setup(tmp_path)


def create(setup: HostModeSetup, sandbox_id: str = "sb") -> Sandbox:
    return Sandbox.create(setup.config, root=setup.root, guest=setup.layout, sandbox_id=sandbox_id,
                          hostname="pod")


def test_container_output_exit_code_state_files_and_timeline(setup: HostModeSetup, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b1", "sh", "-c", "hostname; echo $$; echo oops >&2; exit 3")
    with create(setup) as sb:
        out, err = OutputBuffer(), OutputBuffer()
        c = sb.create_container(bundle, container_id="c1", stdout=out, stderr=err)
        assert c.state.value == "created"
        state = json.loads(sb.paths.container_state("c1").read_text())
        assert (state["state"], state["bundle"], state["sandbox_id"]) == ("created", str(bundle), "sb")
        c.start()
        assert c.wait() == 3 and c.exit_status == 3
        assert (out.getvalue(), err.getvalue(), out.eof) == (b"runc\n1\n", b"oops\n", True)
        assert c.state is ContainerState.STOPPED
        assert json.loads(sb.paths.container_state("c1").read_text())["exit_status"] == 3
        assert json.loads(sb.paths.state_file.read_text())["state"] == "running"
        timeline = sb.timeline()
        assert [p.name for p in timeline.phases] == list(PHASES)
        assert [p.container for p in timeline.phases][-2:] == ["c1", "c1"]
        stamps = [p.monotonic for p in timeline.phases]
        assert stamps == sorted(stamps) and stamps[0] >= timeline.origin
        c.delete()
        assert not sb.paths.container_share("c1").exists() and not sb.paths.container_dir("c1").exists()
        directory = sb.paths.directory
    assert sb.state is SandboxState.STOPPED and not directory.exists()
    assert not setup.vm.pids()


def test_two_containers_have_their_own_pid_namespaces(setup: HostModeSetup, tmp_path: Path) -> None:
    with create(setup) as sb:
        outputs = []
        for cid in ("a", "b"):
            out = OutputBuffer()
            c = sb.create_container(make_bundle(tmp_path / cid, "sh", "-c", "echo $$"), container_id=cid, stdout=out)
            c.start()
            assert c.wait() == 0
            outputs.append(out.getvalue())
    assert outputs == [b"1\n", b"1\n"]


def test_writes_reach_the_host_through_rootfs_volume_and_file_shares(setup: HostModeSetup, tmp_path: Path) -> None:
    volume, hosts = tmp_path / "volume", tmp_path / "hosts"
    volume.mkdir()
    hosts.write_text("10.0.0.1 db\n")
    mounts = (Mount(destination="/data", type="bind", source=str(volume), options=("rbind", "rw")),
              Mount(destination="/etc/hosts", type="bind", source=str(hosts), options=("rbind", "ro")),
              Mount(destination="/dev/shm", type="bind", source="/dev/shm", options=("rbind",)))
    script = "echo root > /tmp/out; echo vol > /data/out; cat /etc/hosts; echo x > /etc/hosts || echo ro"
    bundle = make_bundle(tmp_path / "b", "sh", "-c", script, mounts=mounts)
    with create(setup) as sb:
        out = OutputBuffer()
        c = sb.create_container(bundle, container_id="c", stdout=out)
        shares = c.record.shares
        assert [Path(s).relative_to(sb.paths.container_share("c")).as_posix() for s in shares] == [
            "rootfs", "mounts/7-data", "mounts/8-etc-hosts"]
        c.start()
        assert c.wait() == 0
    assert out.getvalue() == b"10.0.0.1 db\nro\n"
    assert (bundle / "rootfs/tmp/out").read_text() == "root\n"
    assert (volume / "out").read_text() == "vol\n" and hosts.read_text() == "10.0.0.1 db\n"


def test_exec_stdin_pipes_exit_codes_and_guards(setup: HostModeSetup, tmp_path: Path) -> None:
    with create(setup) as sb:
        c = sb.create_container(make_bundle(tmp_path / "b", "sleep", "1000"), container_id="c")
        with pytest.raises(StateError) as caught:
            c.exec(["true"])
        assert (caught.value.state, caught.value.required) == ("created", ("running",))
        c.start()
        with pytest.raises(StateError, match=r"cannot start while running \(allowed when created\)"):
            c.start()
        cat = c.exec(["cat"], exec_id="cat", stdin=b"to cat\n", stdout=PIPE)
        assert cat.stdout is not None
        assert cat.stdout.read() == b"to cat\n"  # EOF arrives exactly when the agent's stream ends
        assert cat.wait() == 0
        piped = c.exec(["sh", "-c", "read line; echo got $line; exit 4"], stdin=PIPE, stdout=PIPE)
        assert piped.stdin is not None and piped.stdout is not None
        piped.stdin.write(b"hello\n")
        piped.stdin.close()
        assert (piped.stdout.read(), piped.wait()) == (b"got hello\n", 4)
        with pytest.raises(StateError, match="cannot delete while running"):
            c.delete()
        c.kill(signal.SIGKILL)
        assert c.wait() == 137
        with pytest.raises(StateError):
            c.kill()
        c.delete()
        with pytest.raises(StateError, match="deleted"):
            c.start()


def test_an_exec_id_is_free_again_once_waited_for(setup: HostModeSetup, tmp_path: Path) -> None:
    with create(setup) as sb:
        c = sb.create_container(make_bundle(tmp_path / "b", "sleep", "1000"), container_id="c")
        c.start()
        sleeper = c.exec(["sleep", "1000"], exec_id="e")
        with pytest.raises(SandboxError, match="exec id e is in use"):
            c.exec(["true"], exec_id="e")
        sleeper.kill(signal.SIGKILL)
        assert sleeper.wait() == 137
        for status in (3, 5):  # the agent forgot it too: the id can be used again, and again
            out = OutputBuffer()
            again = c.exec(["sh", "-c", f"echo again; exit {status}"], exec_id="e", stdout=out)
            assert (again.wait(), out.getvalue()) == (status, b"again\n")
        assert sleeper.wait() == 137  # a waited-for exec keeps its status
        c.delete(force=True)


def test_terminal_init_resize_and_terminal_exec(setup: HostModeSetup, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", "sh", "-c", "read go; tty; stty size; sleep 1000", terminal=True)
    with create(setup) as sb:
        c = sb.create_container(bundle, container_id="c", stdin=PIPE, stdout=PIPE)
        assert c.stdin is not None and c.stdout is not None and c.stderr is None
        c.start()
        c.resize(33, 101)
        c.stdin.write(b"go\n")
        output = b""
        while b"101" not in output:
            output += c.stdout.read(100)
        assert output.split(b"\r\n")[1:3] == [b"/dev/console", b"33 101"]
        out = OutputBuffer()
        shell = c.exec(["sh", "-c", "test -t 0 && test -t 1 && echo tty"], terminal=True, stdout=out)
        assert (shell.wait(), out.getvalue()) == (0, b"tty\r\n")
        c.delete(force=True)
        assert not sb.containers
        assert c.stdout.read() == b""  # the relay closed its end: EOF


def test_async_api_and_a_killed_vm_fails_every_waiter_promptly(setup: HostModeSetup, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", "sleep", "1000")

    async def scenario() -> None:
        async with AsyncSandbox.create(setup.config, root=setup.root, guest=setup.layout, sandbox_id="sb") as sb:
            c = await sb.create_container(bundle, container_id="c")
            await c.start()
            sleeper = await c.exec(["sleep", "1000"])
            waiters = [asyncio.ensure_future(c.wait()), asyncio.ensure_future(c.wait()),
                       asyncio.ensure_future(sleeper.wait())]
            await asyncio.sleep(0.2)
            started = time.monotonic()
            setup.vm.kill_vm()
            results = await asyncio.gather(*waiters, return_exceptions=True)
            assert time.monotonic() - started < 3
            assert all(isinstance(r, SandboxLostError) for r in results), results
            assert sb.state.value == "lost"
            with pytest.raises(StateError, match="lost"):
                await c.kill()
            assert json.loads(sb.paths.state_file.read_text())["state"] == "lost"
        assert sb.state is SandboxState.STOPPED and not sb.paths.directory.exists()
    asyncio.run(scenario())


def test_sandbox_pause_guards_container_verbs(setup: HostModeSetup, tmp_path: Path) -> None:
    with create(setup) as sb:
        sb.pause()
        with pytest.raises(StateError) as caught:
            sb.create_container(make_bundle(tmp_path / "b", "true"))
        assert (caught.value.state, caught.value.required) == ("paused", ("running",))
        sb.resume()
        assert sb.state is SandboxState.RUNNING
        assert [call[0] for call in setup.vm.calls if call[0] in ("pause", "resume")] == ["pause", "resume"]


def test_container_pause_resume_and_stats_with_cgroups(tmp_path: Path, cgroup_root: Path) -> None:
    setup = hostmode_setup(tmp_path, cgroup_root=str(cgroup_root))
    with create(setup) as sb:
        c = sb.create_container(make_bundle(tmp_path / "b", "sleep", "1000"), container_id="c")
        c.start()
        c.pause()
        assert c.state is ContainerState.PAUSED
        assert json.loads(sb.paths.container_state("c").read_text())["state"] == "paused"
        with pytest.raises(StateError, match="cannot exec while paused"):
            c.exec(["true"])
        with pytest.raises(StateError, match="cannot update while paused"):
            c.update(Resources(cpu=CPU(quota=50000, period=100000)))
        c.resume()
        stats = c.stats()
        # The host's hybrid cgroup v2 mount has no memory or pids controller: cpu is what it counts.
        assert stats.cpu_usage_ns > 0 and stats.raw is not None
        c.update(Resources())  # the UpdateContainer round trip, whatever controllers there are
        limits = Resources(cpu=CPU(quota=50000, period=100000))
        if "cpu" in (cgroup_root / "cgroup.controllers").read_text().split():
            c.update(limits)
            assert [f.read_text() for f in cgroup_root.rglob("cpu.max")
                    if f.parent != cgroup_root] == ["50000 100000\n"]
        else:
            with pytest.raises(RpcError, match=r"cpu\.max"):  # the guest's refusal reaches the caller
                c.update(limits)
        c.delete(force=True)


def test_an_init_that_exits_before_start_returns_leaves_a_stopped_container(setup: HostModeSetup,
                                                                             tmp_path: Path) -> None:
    """A waiter (as the shim keeps one from create on) may see `true` exit before StartContainer answers."""
    async def main() -> None:
        async with AsyncSandbox.create(setup.config, root=setup.root, guest=setup.layout, sandbox_id="fast") as sb:
            for n in range(5):
                c = await sb.create_container(make_bundle(tmp_path / f"t{n}", "true"), container_id=f"t{n}")
                waiter = asyncio.create_task(c.wait())
                await c.start()
                assert await waiter == 0
                assert c.state is ContainerState.STOPPED
                await c.delete()

    asyncio.run(main())

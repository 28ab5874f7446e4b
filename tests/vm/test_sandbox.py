"""The sandbox library on real QEMU guests (TCG), with the shared dir over virtio-fs and over 9p."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from kata.config import Config, load_config
from kata.errors import AgentError, HypervisorError, OciError
from kata.image.build import guest_dir_with_9p
from kata.oci.model import Mount
from kata.sandbox import (
    PHASES,
    PIPE,
    AsyncSandbox,
    OutputBuffer,
    Sandbox,
    SandboxLostError,
    SandboxState,
    format_timeline,
)
from kata.sandbox.procs import process_ref
from tests.agent.sandbox_support import make_bundle

pytestmark = pytest.mark.vm
REPO = Path(__file__).resolve().parents[2]
NO_9P = "9p needs a kernel with 9p: kata-runtime image build (the default minimal kernel has it)"


def config_for(shared_fs: str) -> Config:
    config = load_config().config
    hypervisor = config.hypervisor
    if not Path(hypervisor.kernel).exists() or not Path(hypervisor.initrd).exists():
        pytest.skip("no guest image (run `kata-runtime image build`)")
    if shared_fs == "virtio-9p":
        nine_p = guest_dir_with_9p()
        if not (nine_p / "vmlinux").exists():
            pytest.skip(NO_9P)
        # tcg, not auto: a probe of another kernel would replace the cached choice of the default one.
        hypervisor = replace(hypervisor, kernel=str(nine_p / "vmlinux"), initrd=str(nine_p / "kata-initrd.img"),
                             accelerator="tcg")
    return replace(config, hypervisor=replace(hypervisor, shared_fs=shared_fs))


@pytest.fixture(params=["virtio-fs", "virtio-9p"])
def config(request: pytest.FixtureRequest) -> Config:
    return config_for(request.param)


def alive(pids: tuple[int, ...]) -> list[int]:
    return [pid for pid in pids if process_ref(pid) is not None]


def test_containers_share_the_guest_kernel_not_pid_namespaces(config: Config, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    data = Mount(destination="/data", type="bind", source=str(volume), options=("rbind",))
    first = make_bundle(tmp_path / "b1", "sh", "-c", "uname -r; echo $$; echo from-c1 > /tmp/out; "
                        "echo vol > /data/out; sleep 1000", mounts=(data,))
    second = make_bundle(tmp_path / "b2", "sh", "-c", "uname -r; echo $$")
    started = time.monotonic()
    with Sandbox.create(config, root=tmp_path / "run", sandbox_id="vmsb") as sb:
        c1 = sb.create_container(first, container_id="c1", stdout=PIPE)
        c1.start()
        assert c1.stdout is not None
        first_line = c1.stdout.readline()
        first_output = time.monotonic() - started
        pid_line = c1.stdout.readline()
        out = OutputBuffer()
        c2 = sb.create_container(second, container_id="c2", stdout=out)
        c2.start()
        assert c2.wait() == 0
        kernel = first_line.decode().strip()
        assert kernel and kernel != os.uname().release
        assert out.getvalue().decode().split() == [kernel, "1"] and pid_line == b"1\n"
        probe = OutputBuffer()
        assert c1.exec(["sh", "-c", "echo $$; cat /tmp/out"], stdout=probe).wait() == 0
        exec_pid, content = probe.getvalue().decode().split()
        assert exec_pid != "1" and content == "from-c1"
        with pytest.raises(OciError):
            (tmp_path / "bad").mkdir()
            (tmp_path / "bad" / "config.json").write_text('{"ociVersion": "1.0.2", "process": 3}')
            sb.create_container(tmp_path / "bad", container_id="bad")
        assert not sb.paths.container_dir("bad").exists() and sb.state is SandboxState.RUNNING
        c1.kill(signal.SIGKILL)
        assert c1.wait() == 137
        timeline = sb.timeline()
        print(f"\n{config.hypervisor.shared_fs}: first output {first_output:.2f} s after create\n"
              f"{format_timeline(timeline)}")
        assert [p.name for p in timeline.phases][:6] == list(PHASES)
        directory, pids = sb.paths.directory, sb.pids
    assert (first / "rootfs/tmp/out").read_text() == "from-c1\n" and (volume / "out").read_text() == "vol\n"
    assert not directory.exists() and not alive(pids)


def test_killing_qemu_fails_every_waiter_promptly(config: Config, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", "sleep", "1000")

    async def scenario() -> tuple[Path, tuple[int, ...]]:
        async with AsyncSandbox.create(config, root=tmp_path / "run", sandbox_id="vmsb") as sb:
            c = await sb.create_container(bundle, container_id="c")
            await c.start()
            sleeper = await c.exec(["sleep", "1000"])
            waiters = [asyncio.ensure_future(c.wait()), asyncio.ensure_future(sleeper.wait())]
            await asyncio.sleep(0.5)
            killed = time.monotonic()
            os.kill(sb.pids[0], signal.SIGKILL)
            results = await asyncio.gather(*waiters, return_exceptions=True)
            print(f"\nwaiters failed {time.monotonic() - killed:.2f} s after SIGKILL: {results}")
            assert time.monotonic() - killed < 3
            assert all(isinstance(r, SandboxLostError) for r in results), results
            assert sb.state is SandboxState.LOST
            return sb.paths.directory, sb.pids
    directory, pids = asyncio.run(scenario())
    assert not directory.exists()
    deadline = time.monotonic() + 5
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pids)


def test_failing_creates_leave_nothing(config: Config, tmp_path: Path) -> None:
    root = tmp_path / "run"
    missing_kernel = replace(config, hypervisor=replace(config.hypervisor, kernel=str(tmp_path / "nope")))
    with pytest.raises(HypervisorError, match="nope"):
        Sandbox.create(missing_kernel, root=root, sandbox_id="vmsb")
    assert not (root / "vmsb").exists()
    deaf = replace(config, agent=replace(config.agent, dial_timeout=1))
    started = time.monotonic()
    with pytest.raises(AgentError):
        Sandbox.create(deaf, root=root, sandbox_id="vmsb")
    assert time.monotonic() - started < 15
    assert not (root / "vmsb").exists()


CREATOR = """
import json, sys
from pathlib import Path
from kata.config import load_config
from kata.sandbox import Sandbox
from tests.agent.sandbox_support import make_bundle
tmp = Path(sys.argv[1])
sb = Sandbox.create(load_config().config, root=tmp / "run", sandbox_id="vmsb", hostname="pod")
c = sb.create_container(make_bundle(tmp / "b", "sleep", "1000"), container_id="c")
c.start()
survives = sb.detach()
print(json.dumps({"survives": survives, "pids": list(sb.pids)}), flush=True)
"""


def test_the_vm_outlives_its_creator_and_another_process_takes_it_over(tmp_path: Path) -> None:
    config_for("virtio-fs")
    creator = subprocess.run([sys.executable, "-c", CREATOR, str(tmp_path)], capture_output=True, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120, check=False)
    assert creator.returncode == 0, creator.stderr.decode()[-3000:]
    created = json.loads(creator.stdout)
    assert created["survives"] is True and len(alive(tuple(created["pids"]))) == 2  # qemu, virtiofsd run on
    sb = Sandbox.load("vmsb", root=tmp_path / "run")
    try:
        assert sb.state is SandboxState.RUNNING and tuple(created["pids"]) == sb.pids
        c = sb.container("c")
        out = OutputBuffer()
        assert c.exec(["cat", "/proc/sys/kernel/osrelease"], stdout=out).wait() == 0
        assert out.getvalue().strip() and out.getvalue().decode().strip() != os.uname().release
        c.kill(signal.SIGKILL)
        assert c.wait() == 137
    finally:
        sb.delete()
    assert not (tmp_path / "run" / "vmsb").exists() and not alive(sb.pids)

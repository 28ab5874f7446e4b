"""The guest agent in a real VM: containers from a busybox bundle shared over virtio-fs (cloud kernel)
and 9p (generic kernel), exit codes, signals, a terminal exec, and power-off on DestroySandbox."""

from __future__ import annotations

import asyncio
import os
import platform
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from kata.agent import AgentClient, ContainerRequest, ExecRequest, SandboxRequest, Storage
from kata.config.schema import GUEST_DIR, HypervisorConfig
from kata.hypervisor import shared_fs_for
from kata.hypervisor.qemu import QemuHypervisor
from kata.image.build import guest_dir_with_9p
from kata.oci import Process, User
from kata.ttrpc.status import InvalidArgumentError, NotFoundError
from tests.agent.support import make_rootfs, make_spec

pytestmark = pytest.mark.vm

SHARED = "/run/kata-containers/shared/containers"
FLAVOURS = {
    "virtio-fs": (Path(GUEST_DIR), "virtiofs"),
    "virtio-9p": (guest_dir_with_9p(), "9p"),
}


def guest_config(shared_fs: str) -> HypervisorConfig:
    guest_dir, _ = FLAVOURS[shared_fs]
    kernel, initrd = guest_dir / "vmlinux", guest_dir / "kata-initrd.img"
    if not (kernel.exists() and initrd.exists()):
        pytest.skip(f"no guest image in {guest_dir}: run `kata-runtime image build`")
    return HypervisorConfig(kernel=str(kernel), initrd=str(initrd), accelerator="tcg", shared_fs=shared_fs)


@asynccontextmanager
async def sandbox(shared_fs: str, workdir: Path, shared: Path) -> AsyncIterator[tuple[QemuHypervisor, AgentClient]]:
    config = guest_config(shared_fs)
    vm = QemuHypervisor(config, workdir / "vm", sandbox_id="agentvm")
    fs = shared_fs_for(config, vm.paths, str(shared))
    assert fs is not None
    await vm.prepare([fs])
    await vm.start(timeout=60)
    try:
        client = await AgentClient.connect(f"unix://{vm.agent.socket_path}", timeout=30)
        try:
            await client.wait_ready(90)
            storage = Storage(driver="virtio-fs" if shared_fs == "virtio-fs" else "9p", source=fs.tag,
                              fstype=FLAVOURS[shared_fs][1], mount_point=SHARED)
            await client.create_sandbox(SandboxRequest(sandbox_id="agentvm", hostname="vm-host",
                                                       storages=(storage,)))
            yield vm, client
        finally:
            await client.close()
    finally:
        await vm.stop()


async def output_of(client: AgentClient, cid: str, exec_id: str) -> str:
    data = b""
    while chunk := await client.read_stdout(cid, exec_id):
        data += chunk
    return data.decode()


async def exec_status(client: AgentClient, cid: str, exec_id: str, *args: str) -> int:
    await client.exec_process(ExecRequest(cid, exec_id, Process(args=args, env=("PATH=/bin",), cwd="/")))
    return await client.wait_process(cid, exec_id)


async def scenario(shared_fs: str, tmp_path: Path) -> dict[str, object]:
    shared = tmp_path / "shared"
    make_rootfs(shared / "c1")
    results: dict[str, object] = {}
    async with sandbox(shared_fs, tmp_path, shared) as (vm, client):
        spec = make_spec(Path(f"{SHARED}/c1/rootfs"), "sh", "-c", "uname -r; echo $$; id; hostname; sleep 1000")
        assert spec.process is not None
        spec = replace(spec, hostname="web", process=replace(spec.process, user=User(uid=1000, gid=1000)))
        await client.create_container(ContainerRequest("c1", "c1", spec))
        await client.start_container("c1")
        lines: list[str] = []
        while len(lines) < 4:
            lines += (await client.read_stdout("c1", "c1")).decode().splitlines()
        results["lines"] = lines
        results["exit7"] = await exec_status(client, "c1", "e7", "sh", "-c", "exit 7")
        await client.exec_process(ExecRequest("c1", "sleeper", Process(args=("sleep", "1000"), env=("PATH=/bin",),
                                                                        cwd="/")))
        await client.signal_process("c1", "sleeper", signal.SIGKILL)
        results["killed"] = await client.wait_process("c1", "sleeper")
        tty_script = "test -t 0 && test -t 1 && echo is-a-tty; sleep 0.5; stty size"
        tty = Process(args=("sh", "-c", tty_script), env=("PATH=/bin", "TERM=xterm"), cwd="/", terminal=True)
        await client.exec_process(ExecRequest("c1", "tty", tty))
        await client.tty_win_resize("c1", "tty", 33, 101)
        results["tty"] = await output_of(client, "c1", "tty")
        results["tty_status"] = await client.wait_process("c1", "tty")
        (shared / "c1" / "rootfs" / "tmp" / "from-host").write_text("shared\n")
        results["shared"] = await exec_status(client, "c1", "cat", "grep", "-q", "shared", "/tmp/from-host")
        with pytest.raises(NotFoundError):
            await client.start_container("nosuch")
        escaping = make_spec(Path("/etc"), "true")
        with pytest.raises(InvalidArgumentError, match="outside"):
            await client.create_container(ContainerRequest("c2", "c2", escaping))
        results["serving"] = await client.check()
        pids = vm.pids()
        await client.destroy_sandbox()
        results["exit"] = await asyncio.wait_for(vm.wait(), 20)
    results["gone"] = not any(os.path.exists(f"/proc/{pid}") for pid in pids)
    return results


@pytest.mark.parametrize("shared_fs", ["virtio-fs", "virtio-9p"])
def test_containers_run_in_the_guest(shared_fs: str, tmp_path: Path) -> None:
    results = asyncio.run(scenario(shared_fs, tmp_path))
    release, pid, ident, hostname = results["lines"][:4]  # type: ignore[index]
    assert release != platform.release() and release.startswith("6.1.")
    assert pid == "1"
    assert ident.startswith("uid=1000 gid=1000")
    assert hostname == "web"
    assert results["exit7"] == 7
    assert results["killed"] == 137
    tty_out = str(results["tty"]).replace("\r", "")
    assert "is-a-tty" in tty_out and "33 101" in tty_out, tty_out
    assert results["tty_status"] == 0
    assert results["shared"] == 0
    assert results["serving"] is True
    assert results["exit"] == 0
    assert results["gone"] is True

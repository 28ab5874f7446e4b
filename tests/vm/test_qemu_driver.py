"""QemuHypervisor booting the real guest kernel: agent channel, virtio-fs, hotplug, pause, clean stop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kata.config.schema import HypervisorConfig
from kata.errors import HypervisorError
from kata.hypervisor import BlockDevice, Device, SharedFs, shared_fs_for
from kata.hypervisor.qemu import QemuHypervisor
from kata.protocols.pb import health_pb2
from kata.ttrpc.aio.client import connect_unix
from tests.vm.tiny_guest import GUEST_INITRD, GUEST_KERNEL, GuestShell, build_tiny_initrd, have_guest_initrd

pytestmark = pytest.mark.vm
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def tiny_initrd(tmp_path_factory: pytest.TempPathFactory) -> str:
    if not GUEST_KERNEL.exists():
        pytest.skip(f"no guest kernel at {GUEST_KERNEL} (run `make kernel`)")
    return str(build_tiny_initrd(tmp_path_factory.mktemp("initrd")))


def tiny_config(initrd: str, **changes: Any) -> HypervisorConfig:
    return HypervisorConfig(kernel=str(GUEST_KERNEL), initrd=initrd, accelerator="tcg", **changes)


@asynccontextmanager
async def booted(config: HypervisorConfig, workdir: Path,
                 devices: Sequence[Device] = ()) -> AsyncIterator[tuple[QemuHypervisor, GuestShell]]:
    """A started VM whose guest answered PING, stopped (and checked gone) on exit."""
    vm = QemuHypervisor(config, workdir, sandbox_id="vmtest")
    await vm.prepare(devices)
    await vm.start(timeout=30)
    pids = vm.pids()
    try:
        shell = await GuestShell.connect(vm.agent.socket_path)
        assert (await shell.ping()).startswith("PONG")
        yield vm, shell
        await shell.close()
    finally:
        await vm.stop()
    assert vm.pids() == () and not any(alive(pid) for pid in pids)


async def until(shell: GuestShell, command: str, expected: str, seconds: float = 10.0, *,
                absent: bool = False) -> str:
    """Run ``command`` in the guest until its output contains ``expected`` (or, ``absent``, no longer
    does); the last output. Hotplug is asynchronous in the guest."""
    output = ""
    for _ in range(int(seconds / 0.2)):
        _, output = await shell.run(command)
        if (expected in output) != absent:
            return output
        await asyncio.sleep(0.2)
    raise AssertionError(f"guest: {command!r} kept {'showing' if absent else 'missing'} {expected!r}; "
                         f"last output {output!r}")


def test_the_guest_agent_answers_over_the_channel(tmp_path: Path) -> None:
    if not have_guest_initrd():
        pytest.skip(f"the guest initrd is not built yet ({GUEST_INITRD}; `kata-runtime image build`)")
    vm = QemuHypervisor(HypervisorConfig(accelerator="tcg"), tmp_path / "vm", sandbox_id="vmtest")

    async def scenario() -> int:
        await vm.prepare()
        await vm.start(timeout=30)
        try:
            client = await connect_unix(vm.agent.socket_path)
            try:  # the guest agent speaks ttRPC: grpc.Health/Check, as Kata's agent does
                reply = await client.call("grpc.Health", "Check", health_pb2.CheckRequest(),
                                          health_pb2.HealthCheckResponse, timeout=90)
            finally:
                await client.close()
        finally:
            await vm.stop()
        return reply.status

    assert run(scenario()) == health_pb2.HealthCheckResponse.SERVING


def test_q35_shares_a_directory_and_hotplugs_a_disk(tiny_initrd: str, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (8 << 20))
    config = tiny_config(tiny_initrd)

    async def scenario() -> None:
        fs = shared_fs_for(config, QemuHypervisor(config, tmp_path / "vm").paths, str(shared))
        assert fs is not None
        async with booted(config, tmp_path / "vm", [fs]) as (vm, shell):
            assert len(vm.pids()) == 2  # qemu + virtiofsd
            (shared / "hello.txt").write_text("written on the host after boot\n")
            status, output = await shell.run("mount -t virtiofs kataShared /mnt && cat /mnt/hello.txt "
                                             "&& echo from-guest > /mnt/reply.txt")
            assert (status, output) == (0, "written on the host after boot\n")
            assert (shared / "reply.txt").read_text() == "from-guest\n"
            block = BlockDevice(str(disk), "disk0", read_only=True)
            await vm.add_device(block)
            assert "16384" in await until(shell, "cat /sys/block/vda/size", "16384")
            await vm.remove_device(block)
            await until(shell, "ls /sys/block", "vda", absent=True)

    run(scenario())
    assert not (tmp_path / "vm").exists()


def test_microvm_boots_and_shares_a_directory(tiny_initrd: str, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello.txt").write_text("microvm\n")
    config = tiny_config(tiny_initrd, machine_type="microvm")

    async def scenario() -> tuple[int, str]:
        fs = SharedFs("kataShared", str(shared), socket_path=str(tmp_path / "vm" / "virtiofsd.sock"))
        async with booted(config, tmp_path / "vm", [fs]) as (vm, shell):
            assert not vm.capabilities().block_hotplug
            return await shell.run("mount -t virtiofs kataShared /mnt && cat /mnt/hello.txt")

    assert run(scenario()) == (0, "microvm\n")


def test_pause_freezes_the_guest_until_resume(tiny_initrd: str, tmp_path: Path) -> None:
    async def scenario() -> str:
        async with booted(tiny_config(tiny_initrd), tmp_path / "vm") as (vm, shell):
            await vm.pause()
            await shell.send("PING")
            with pytest.raises(TimeoutError):
                await shell.read_line(timeout=1.0)
            await vm.check()
            await vm.resume()
            return await shell.read_line(timeout=10.0)

    assert run(scenario()).startswith("PONG")


def test_vcpus_and_memory_are_hotplugged(tiny_initrd: str, tmp_path: Path) -> None:
    config = tiny_config(tiny_initrd, default_maxvcpus=2, default_maxmemory=1024)

    async def scenario() -> None:
        async with booted(config, tmp_path / "vm") as (vm, shell):
            _, before = await shell.run("grep MemTotal /proc/meminfo")
            assert await vm.resize_vcpus(2) == 2
            await until(shell, "cat /sys/devices/system/cpu/present", "0-1")
            with pytest.raises(HypervisorError, match="no vCPU hot-unplug under single-threaded TCG"):
                await vm.resize_vcpus(1)
            assert await vm.resize_memory(300) == 384  # whole 128 MiB blocks
            after = await until(shell, "grep MemTotal /proc/meminfo", "kB")
            for _ in range(50):
                if int(after.split()[1]) - int(before.split()[1]) >= 128 * 1024:
                    break
                await asyncio.sleep(0.2)
                _, after = await shell.run("grep MemTotal /proc/meminfo")
            assert int(after.split()[1]) - int(before.split()[1]) >= 128 * 1024  # onlined by the kernel

    run(scenario())


def test_virtio_fs_is_hotplugged_with_its_own_virtiofsd(tiny_initrd: str, tmp_path: Path) -> None:
    shared = tmp_path / "hot"
    shared.mkdir()
    (shared / "f.txt").write_text("hotplugged share\n")

    async def scenario() -> None:
        async with booted(tiny_config(tiny_initrd), tmp_path / "vm") as (vm, shell):
            socket = str(tmp_path / "vm" / "virtiofsd-hot.sock")
            fs = SharedFs("hot", str(shared), socket_path=socket, id="fs1")
            await vm.add_device(fs)
            assert len(vm.pids()) == 2
            # The guest probes the device asynchronously: mounting fails (EINVAL) until it has.
            output = await until(shell, "mount -t virtiofs hot /mnt && cat /mnt/f.txt && umount /mnt",
                                 "hotplugged share")
            assert output == "hotplugged share\n"
            await vm.remove_device(fs)
            assert len(vm.pids()) == 1
            assert not (tmp_path / "vm" / "virtiofsd-hot.sock").exists()

    run(scenario())


def test_a_bad_kernel_fails_start_and_leaves_nothing(tmp_path: Path) -> None:
    config = HypervisorConfig(kernel=str(tmp_path / "no-vmlinux"), initrd="", accelerator="tcg")
    vm = QemuHypervisor(config, tmp_path / "vm")

    async def scenario() -> None:
        await vm.prepare()
        await vm.start(timeout=30)

    with pytest.raises(HypervisorError, match="no-vmlinux"):
        run(scenario())
    assert vm.pids() == () and not (tmp_path / "vm").exists()

"""The VM cache without a VM: the server's pool over fake VMs, its answers, the cache source, adopting processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import pytest

from kata.config import Config
from kata.config.schema import FactoryConfig
from kata.errors import FactoryError, HypervisorError
from kata.factory import DirectSource, TemplateSource, vm_source
from kata.factory import cache_server as cache_server_module
from kata.factory.cache import CACHE_SERVICE, CachedVm, cache_base, cache_directory
from kata.factory.cache_server import CacheServer
from kata.factory.pb import vmcache_pb2
from kata.factory.source import CacheSource, VmSource
from kata.hypervisor import Hypervisor
from kata.hypervisor.fake import FakeHypervisor
from kata.hypervisor.process import adopt, proc_stat, spawn
from kata.ttrpc.aio.server import AsyncServer
from kata.ttrpc.dispatch import Router
from kata.ttrpc.status import AlreadyExistsError, FailedPreconditionError, UnavailableError


def cache_config(endpoint: Path, number: int = 2, *, enable_template: bool = False) -> Config:
    return replace(Config(), factory=replace(FactoryConfig(), vm_cache_number=number, vm_cache_endpoint=str(endpoint),
                                             enable_template=enable_template))


class CachedFakeVm(FakeHypervisor):
    """A fake VM the cache can hand over: records adopt and detach; this test process stands for its VMM
    (a live pid, so the server's answer names a process)."""

    async def adopt(self, processes: Sequence[tuple[int, int]], timeout: float = 10.0) -> None:
        self.calls.append(("adopt", tuple(processes), timeout))

    async def detach(self) -> None:
        self.calls.append(("detach",))

    def pids(self) -> tuple[int, ...]:
        return (os.getpid(),) if super().pids() else ()


class FakeMaker:
    """The server's VmMaker: makes ``workdir`` (undo: remove it) and a started CachedFakeVm with ``key`` as it
    is when the call starts (the real maker computes the key before booting). Calls numbered ``hold_from``
    and later wait for ``gate`` (a slow boot); with ``failure`` set, calls fail after making the dir."""

    def __init__(self, key: str = "k1") -> None:
        self.key = key
        self.calls = 0
        self.made: list[CachedFakeVm] = []
        self.hold_from: int | None = None
        self.gate = asyncio.Event()
        self.failure: Exception | None = None

    async def current_key(self) -> str:
        return self.key

    async def __call__(self, vm_id: str, workdir: Path, stack: AsyncExitStack) -> tuple[Hypervisor, str]:
        index, key = self.calls, self.key
        self.calls += 1
        workdir.mkdir()
        stack.callback(shutil.rmtree, workdir)
        if self.failure is not None:
            raise self.failure
        if self.hold_from is not None and index >= self.hold_from:
            await self.gate.wait()
        vm = CachedFakeVm(workdir=workdir, sandbox_id=vm_id)
        await vm.prepare()
        stack.push_async_callback(vm.stop)
        await vm.start()
        self.made.append(vm)
        return vm, key


@contextlib.asynccontextmanager
async def running_cache(tmp_path: Path, maker: FakeMaker, number: int = 2) -> AsyncIterator[CacheServer]:
    server = CacheServer(cache_config(tmp_path / "cache.sock", number), make=maker)
    server._key_check = maker.current_key  # the real check prepares a QEMU VM
    server.start()
    try:
        yield server
    finally:
        await server.close()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def start_time(pid: int) -> int:
    found = proc_stat(pid)
    assert found is not None
    return found[1]


def stopped(vm: FakeHypervisor) -> bool:
    return any(call[0] == "stop" for call in vm.calls)


def detached(vm: FakeHypervisor) -> bool:
    return ("detach",) in vm.calls


# the pool


def test_the_pool_fills_to_vm_cache_number_and_status_says_so(tmp_path: Path) -> None:
    async def main() -> None:
        maker = FakeMaker()
        async with running_cache(tmp_path, maker) as server:
            await until(lambda: len(server.ready) == 2)
            await asyncio.sleep(0.05)
            assert maker.calls == 2  # full: no more VMs are made
            status = server.status()
            assert (status.number, status.ready, status.booting, status.served, status.failed) == (2, 2, 0, 0, 0)
            assert status.source == "direct" and status.key == "k1" and status.pid == os.getpid()
            assert {vm.vm_id for vm in status.vms} == {p.name for p in (tmp_path / "cache.sock.vms").iterdir()}
            assert all([p.pid for p in vm.processes] == [os.getpid()] for vm in status.vms)

    asyncio.run(main())


def test_get_vm_moves_the_vm_to_the_target_detaches_it_and_the_pool_refills(tmp_path: Path) -> None:
    async def main() -> None:
        maker = FakeMaker()
        async with running_cache(tmp_path, maker) as server:
            await until(lambda: len(server.ready) == 2)
            first = server.status().vms[0]
            target = tmp_path / "sandbox"
            message = await server.get_vm("k1", target, "sb1", timeout=5.0)
            assert message.vm_id == first.vm_id and message.key == "k1"
            assert target.is_dir() and not (server.directory / first.vm_id).exists()
            cached = CachedVm.from_message(message)
            assert cached.base == "direct" and cached.processes == ((os.getpid(), start_time(os.getpid())),)
            handed = next(vm for vm in maker.made if vm.sandbox_id == first.vm_id)
            assert detached(handed) and not stopped(handed)
            assert server.status().served == 1
            await until(lambda: len(server.ready) == 2)
            assert maker.calls == 3
        assert not stopped(handed)  # the server's close stops only what it still holds
        assert target.is_dir()

    asyncio.run(main())


def test_a_wrong_key_is_refused_and_nothing_is_handed_over(tmp_path: Path) -> None:
    async def main() -> None:
        maker = FakeMaker()
        async with running_cache(tmp_path, maker) as server:
            await until(lambda: len(server.ready) == 2)
            with pytest.raises(FailedPreconditionError, match="key k1"):
                await server.get_vm("other", tmp_path / "sandbox", "sb1", timeout=5.0)
            assert not (tmp_path / "sandbox").exists()
            assert server.status().ready == 2 and server.served == 0
            assert not any(detached(vm) or stopped(vm) for vm in maker.made)

    asyncio.run(main())


def test_stale_vms_are_stopped_and_the_new_key_gets_a_fresh_vm(tmp_path: Path) -> None:
    async def main() -> None:
        maker = FakeMaker("k1")
        async with running_cache(tmp_path, maker) as server:
            await until(lambda: len(server.ready) == 2)
            old = list(maker.made)
            maker.key = "k2"  # say the kernel was rebuilt
            message = await server.get_vm("k2", tmp_path / "sandbox", "sb1", timeout=5.0)
            assert message.key == "k2"
            assert all(stopped(vm) and not detached(vm) for vm in old)
            assert not any((server.directory / vm.sandbox_id).exists() for vm in old)
            assert message.vm_id not in {vm.sandbox_id for vm in old}
            await until(lambda: len(server.ready) == 2)
            assert {e.key for e in server.ready} == {"k2"}

    asyncio.run(main())


def test_a_vm_booting_while_the_key_changes_is_not_handed_over(tmp_path: Path) -> None:
    async def main() -> None:
        maker = FakeMaker("k1")
        async with running_cache(tmp_path, maker, number=1) as server:
            await until(lambda: len(server.ready) == 1)
            maker.hold_from = 1  # the refill computes key k1, then boots slowly
            await server.get_vm("k1", tmp_path / "first", "sb1", timeout=5.0)
            await until(lambda: server.booting == 1)
            maker.key = "k2"
            request = asyncio.create_task(server.get_vm("k2", tmp_path / "second", "sb2", timeout=5.0))
            await asyncio.sleep(0.05)
            maker.gate.set()  # the stale VM becomes ready while the request waits
            message = await request
            assert message.key == "k2"
            assert stopped(maker.made[1]) and not detached(maker.made[1])

    asyncio.run(main())


def test_an_existing_target_is_refused_and_the_vm_stays_in_the_pool(tmp_path: Path) -> None:
    async def main() -> None:
        maker = FakeMaker()
        async with running_cache(tmp_path, maker) as server:
            await until(lambda: len(server.ready) == 2)
            pooled = [vm.vm_id for vm in server.status().vms]
            target = tmp_path / "sandbox"
            target.mkdir()
            (target / "state.json").write_text("{}")
            with pytest.raises(AlreadyExistsError):
                await server.get_vm("k1", target, "sb1", timeout=5.0)
            with pytest.raises(FailedPreconditionError, match="not an absolute path"):
                await server.get_vm("k1", Path("relative/sandbox"), "sb1", timeout=5.0)
            assert [vm.vm_id for vm in server.status().vms] == pooled
            assert all((server.directory / vm_id).is_dir() for vm_id in pooled)
            assert server.served == 0 and not any(detached(vm) for vm in maker.made)

    asyncio.run(main())


def test_an_empty_existing_target_is_refused_too(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_cache(tmp_path, FakeMaker(), number=1) as server:
            await until(lambda: len(server.ready) == 1)
            (tmp_path / "sandbox").mkdir()  # rename(2) alone would replace it
            with pytest.raises(AlreadyExistsError):
                await server.get_vm("k1", tmp_path / "sandbox", "sb1", timeout=5.0)
            assert len(server.ready) == 1 and not any((tmp_path / "sandbox").iterdir())

    asyncio.run(main())


def test_a_vm_whose_vmm_died_in_the_pool_is_stopped_not_handed_over(tmp_path: Path) -> None:
    async def main() -> None:
        maker = FakeMaker()
        async with running_cache(tmp_path, maker, number=1) as server:
            await until(lambda: len(server.ready) == 1)
            dead = maker.made[0]
            dead.crash()  # the VMM ended on its own: no live process left
            answer = await server.get_vm("k1", tmp_path / "sandbox", "sb1", timeout=5.0)
            assert answer.vm_id != dead.sandbox_id and answer.processes
            assert stopped(dead) and len(maker.made) == 2

    asyncio.run(main())


def test_when_making_vms_fails_the_failures_count_and_get_vm_is_unavailable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_server_module, "RETRY_DELAYS", (0.01, 0.02))

    async def main() -> None:
        maker = FakeMaker()
        maker.failure = HypervisorError("no kvm")
        async with running_cache(tmp_path, maker) as server:
            await until(lambda: server.status().failed >= 3)
            with pytest.raises(UnavailableError, match="attempts to make one failed"):
                await server.get_vm("k1", tmp_path / "sandbox", "sb1", timeout=5.0)
            assert server.status().ready == 0
            assert list(server.directory.iterdir()) == []  # each failed attempt's dir was removed
            maker.failure = None  # the host recovers: the next attempt fills the pool
            await until(lambda: len(server.ready) == 2)
            assert (await server.get_vm("k1", tmp_path / "sandbox", "sb1", timeout=5.0)).key == "k1"

    asyncio.run(main())


def test_get_vm_waits_for_a_booting_vm_and_times_out_when_none_comes(tmp_path: Path) -> None:
    async def main() -> None:
        maker = FakeMaker()
        maker.hold_from = 0
        async with running_cache(tmp_path, maker, number=1) as server:
            await until(lambda: server.booting == 1)
            with pytest.raises(TimeoutError):
                await server.get_vm("k1", tmp_path / "sandbox", "sb1", timeout=0.1)
            request = asyncio.create_task(server.get_vm("k1", tmp_path / "sandbox", "sb1", timeout=5.0))
            await asyncio.sleep(0.05)
            assert not request.done()
            maker.gate.set()
            message = await request
            assert message.vm_id == maker.made[0].sandbox_id and (tmp_path / "sandbox").is_dir()

    asyncio.run(main())


def test_close_stops_every_cached_vm_and_removes_the_cache_directory(tmp_path: Path) -> None:
    async def main() -> None:
        maker = FakeMaker()
        maker.hold_from = 2  # the third VM is still booting when the server stops
        async with running_cache(tmp_path, maker, number=3) as server:
            await until(lambda: len(server.ready) == 2 and server.booting == 1)
        assert len(maker.made) == 2 and all(stopped(vm) for vm in maker.made)
        assert not server.directory.exists()  # the booting VM's dir included
        assert server.status().ready == 0

    asyncio.run(main())


# the shared facts


def test_a_cached_vm_from_its_message() -> None:
    message = vmcache_pb2.CachedVm(vm_id="v1", key="template-abc", source="template", boot_seconds=1.5,
                                   processes=[vmcache_pb2.Process(pid=10, start_time=100, name="vmm"),
                                              vmcache_pb2.Process(pid=11, start_time=101, name="helper")])
    assert CachedVm.from_message(message) == CachedVm(vm_id="v1", key="template-abc", base="template",
                                                      processes=((10, 100), (11, 101)), boot_seconds=1.5)


@pytest.mark.parametrize("message", [
    vmcache_pb2.CachedVm(vm_id="v1", key="k", source="direct"),
    vmcache_pb2.CachedVm(vm_id="v1", key="k", source="snapshot", processes=[vmcache_pb2.Process(pid=10)]),
], ids=["no processes", "unknown source"])
def test_a_malformed_message_is_a_factory_error(message: vmcache_pb2.CachedVm) -> None:
    with pytest.raises(FactoryError, match="malformed answer for vm 'v1'"):
        CachedVm.from_message(message)


def test_the_cache_directory_is_beside_the_endpoint_and_the_base_follows_enable_template() -> None:
    assert cache_directory(cache_config(Path("/x/cache.sock"))) == Path("/x/cache.sock.vms")
    assert cache_base(cache_config(Path("/x/cache.sock"))) == "direct"
    assert cache_base(cache_config(Path("/x/cache.sock"), enable_template=True)) == "template"


# the cache source


@pytest.mark.parametrize(("enable_template", "fallback"), [(False, DirectSource), (True, TemplateSource)])
def test_vm_source_is_the_cache_over_the_configured_source(enable_template: bool, fallback: type[VmSource]) -> None:
    config = cache_config(Path("/x/cache.sock"), 1, enable_template=enable_template)
    source = vm_source(config)
    assert isinstance(source, CacheSource) and isinstance(source.fallback, fallback)
    assert source.name == source.fallback.name  # until a VM is claimed
    assert isinstance(vm_source(config, host_mode=True), DirectSource)
    assert not isinstance(vm_source(cache_config(Path("/x/cache.sock"), 0)), CacheSource)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a path short enough for unix sockets (tmp_path may not be)."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="vmc"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def fake_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox side's key without preparing a QEMU VM: always ``k1``."""
    async def cache_shape(config: Config, workdir: Path) -> Hypervisor:
        del config
        return FakeHypervisor(workdir=workdir)

    def shape_key(vm: Hypervisor, config: Config) -> str:
        del vm, config
        return "k1"

    monkeypatch.setattr("kata.factory.cache.cache_shape", cache_shape)
    monkeypatch.setattr("kata.factory.cache.shape_key", shape_key)


@pytest.mark.usefixtures("fake_shape")
def test_claim_workdir_falls_back_when_nothing_listens(short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = vm_source(cache_config(short_dir / "cache.sock", 1))
    with caplog.at_level(logging.WARNING, logger="kata.factory"):
        assert asyncio.run(source.claim_workdir(short_dir / "sandbox", "sb1")) is None
    assert source.name == "direct" and not source.nics_hotplugged
    assert any("using a direct VM" in r.getMessage() for r in caplog.records)


@pytest.mark.usefixtures("fake_shape")
def test_claim_workdir_takes_a_vm_from_a_serving_cache(short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    endpoint = short_dir / "cache.sock"

    async def main() -> None:
        maker = FakeMaker("k1")
        cache = CacheServer(cache_config(endpoint, 1), make=maker)
        cache._key_check = maker.current_key
        router = Router()
        router.register(CACHE_SERVICE, cache.methods())
        cache.start()
        try:
            async with AsyncServer(router) as server:
                await server.listen_unix(str(endpoint))
                await until(lambda: len(cache.ready) == 1)
                source = vm_source(cache_config(endpoint, 1))
                processes = await source.claim_workdir(short_dir / "sandbox", "sb1")
                assert processes == ((os.getpid(), start_time(os.getpid())),)
                assert source.name == "cache" and source.nics_hotplugged
                assert (short_dir / "sandbox").is_dir() and detached(maker.made[0])

                maker.key = "k2"  # the cache now makes VMs of another shape: refused, the sandbox falls back
                other = vm_source(cache_config(endpoint, 1))
                with caplog.at_level(logging.WARNING, logger="kata.factory"):
                    assert await other.claim_workdir(short_dir / "other", "sb2") is None
                assert other.name == "direct" and not (short_dir / "other").exists()
                assert any("FAILED_PRECONDITION" in r.getMessage() for r in caplog.records)
        finally:
            await cache.close()

    asyncio.run(main())


# adopting and releasing processes


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process to adopt (started here, but adopted as another's: its status is not read through adopt)."""
    proc = subprocess.Popen(["sleep", "30"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_an_adopted_process_is_watched_and_terminated(sleeper: subprocess.Popen[bytes], tmp_path: Path) -> None:
    async def main() -> None:
        found = proc_stat(sleeper.pid)
        assert found is not None
        child = adopt(sleeper.pid, found[1], name="vmm", log_path=tmp_path / "vmm.log")
        assert child.pid == sleeper.pid and child.alive()
        assert await child.terminate(grace=5.0) == 0  # another process's child: its status is not ours
        assert not child.alive()

    asyncio.run(main())
    assert sleeper.wait(timeout=5) == -signal.SIGTERM


def test_adopting_a_wrong_start_time_or_a_dead_pid_fails(sleeper: subprocess.Popen[bytes], tmp_path: Path) -> None:
    async def main() -> None:
        found = proc_stat(sleeper.pid)
        assert found is not None
        with pytest.raises(HypervisorError, match="the process is gone"):
            adopt(sleeper.pid, found[1] + 1, name="vmm", log_path=tmp_path / "vmm.log")  # the pid was reused
        sleeper.kill()
        sleeper.wait()
        with pytest.raises(HypervisorError, match=f"adopt vmm \\(pid {sleeper.pid}\\)"):
            adopt(sleeper.pid, found[1], name="vmm", log_path=tmp_path / "vmm.log")

    asyncio.run(main())


def test_a_released_child_is_still_reaped_but_never_signalled_or_waited_for(tmp_path: Path) -> None:
    async def main() -> None:
        child = await spawn(["sleep", "30"], name="sleep", log_path=tmp_path / "sleep.log")
        try:
            child.release()
            child.send_signal(signal.SIGKILL)  # ignored: the process is another's now
            await asyncio.sleep(0.1)
            assert child.alive() and proc_stat(child.pid) is not None
            with pytest.raises(HypervisorError, match="handed over"):
                await child.wait()
        finally:
            os.kill(child.pid, signal.SIGTERM)  # its new owner ends it
        await until(lambda: not child.alive())
        assert proc_stat(child.pid) is None  # reaped here: no zombie
        assert child.returncode == -signal.SIGTERM

    asyncio.run(main())

"""The VM cache server's pool with a fake VM maker: fill, hand-over by rename, refill, refusals, close."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import pytest

from kata.config import Config
from kata.config.schema import FactoryConfig
from kata.errors import HypervisorError
from kata.factory import cache_server
from kata.factory.cache_server import CacheServer
from kata.hypervisor import Hypervisor
from kata.hypervisor.fake import FakeHypervisor
from kata.ttrpc.status import AlreadyExistsError, FailedPreconditionError, UnavailableError


class HandableVm(FakeHypervisor):
    """A fake VM the server can hand over (it only detaches it)."""

    detached = False

    async def adopt(self, processes: object, timeout: float = 10.0) -> None:
        del processes, timeout

    async def detach(self) -> None:
        self.detached = True


Maker = Callable[[str, Path, AsyncExitStack], Awaitable[tuple[Hypervisor, str]]]


def pool(tmp_path: Path, number: int, make: Maker, keys: list[str] | None = None) -> CacheServer:
    """A server whose current key is ``keys[0]`` (k1), instead of one computed from a prepared QEMU VM."""
    config = replace(Config(), factory=FactoryConfig(vm_cache_number=number,
                                                     vm_cache_endpoint=str(tmp_path / "cache.sock")))
    server = CacheServer(config, make=make, directory=tmp_path / "vms")
    current = keys if keys is not None else ["k1"]

    async def key() -> str:
        return current[0]
    server._key_check = key
    return server


def maker(made: list[Path], keys: list[str] | None = None) -> Maker:
    """Makes fake VMs (a workdir each, removed by their undo) of key ``keys[0]`` (k1)."""
    current = keys if keys is not None else ["k1"]

    async def make(vm_id: str, workdir: Path, stack: AsyncExitStack) -> tuple[Hypervisor, str]:
        workdir.mkdir()
        stack.callback(workdir.rmdir)
        made.append(workdir)
        return HandableVm(workdir=workdir, sandbox_id=vm_id), current[0]
    return make


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0.01)


def test_the_pool_fills_hands_over_by_rename_and_refills(tmp_path: Path) -> None:
    made: list[Path] = []

    async def scenario() -> None:
        server = pool(tmp_path, 2, maker(made))
        server.start()
        await until(lambda: len(server.ready) == 2)
        first = server.ready[0]
        target = tmp_path / "root" / "sb1"
        target.parent.mkdir()
        answer = await server.get_vm("k1", target, "sb1", timeout=1)
        assert answer.vm_id == first.vm_id and answer.source == "direct"
        assert target.is_dir() and not first.workdir.exists()
        assert isinstance(first.vm, HandableVm) and first.vm.detached
        await until(lambda: len(server.ready) == 2)  # refilled
        status = server.status()
        assert (status.number, status.ready, status.served, status.failed) == (2, 2, 1, 0)
        await server.close()
        assert target.is_dir()  # handed over: not the server's to remove
        assert not (tmp_path / "vms").exists()
    asyncio.run(scenario())
    assert len(made) == 3


def test_refusals_leave_the_vm_in_the_pool(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = pool(tmp_path, 1, maker([]))
        server.start()
        await until(lambda: len(server.ready) == 1)
        with pytest.raises(FailedPreconditionError, match="key k1, the caller's configuration gives k2"):
            await server.get_vm("k2", tmp_path / "sb", "sb", timeout=1)
        (tmp_path / "taken").mkdir()
        (tmp_path / "taken" / "file").write_text("x")
        with pytest.raises(AlreadyExistsError):
            await server.get_vm("k1", tmp_path / "taken", "sb", timeout=1)
        with pytest.raises(FailedPreconditionError, match="not an absolute path"):
            await server.get_vm("k1", Path("relative"), "sb", timeout=1)
        assert len(server.ready) == 1 and server.served == 0
        await server.close()
    asyncio.run(scenario())


def test_stale_vms_are_stopped_never_handed_over(tmp_path: Path) -> None:
    made: list[Path] = []
    keys = ["k1"]

    async def scenario() -> None:
        server = pool(tmp_path, 1, maker(made, keys), keys)
        server.start()
        await until(lambda: len(server.ready) == 1)
        stale = server.ready[0]
        keys[0] = "k2"  # a rebuilt kernel: what the server makes now has another key
        answer = await server.get_vm("k2", tmp_path / "sb", "sb", timeout=5)
        assert answer.key == "k2" and answer.vm_id != stale.vm_id
        assert not stale.workdir.exists()  # stopped: its undo ran
        await server.close()
    asyncio.run(scenario())


def test_failures_are_counted_and_a_request_then_gets_unavailable(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_server, "RETRY_DELAYS", (0.01,))

    async def broken(vm_id: str, workdir: Path, stack: AsyncExitStack) -> tuple[Hypervisor, str]:
        raise HypervisorError("no kernel")

    async def scenario() -> None:
        server = pool(tmp_path, 1, broken)
        server.start()
        await until(lambda: server.failed >= 2)
        with pytest.raises(UnavailableError, match="attempts to make one failed"):
            await server.get_vm("k1", tmp_path / "sb", "sb", timeout=5)
        await server.close()
    asyncio.run(scenario())


def test_a_request_waits_for_a_booting_vm_and_times_out_without_one(tmp_path: Path) -> None:
    made: list[Path] = []
    go = asyncio.Event()
    fast = maker(made)

    async def slow(vm_id: str, workdir: Path, stack: AsyncExitStack) -> tuple[Hypervisor, str]:
        await go.wait()
        return await fast(vm_id, workdir, stack)

    async def scenario() -> None:
        server = pool(tmp_path, 1, slow)
        server.start()
        await until(lambda: server.booting == 1)
        with pytest.raises(TimeoutError):
            await server.get_vm("k1", tmp_path / "sb1", "sb1", timeout=0.1)
        asyncio.get_running_loop().call_later(0.1, go.set)
        answer = await server.get_vm("k1", tmp_path / "sb2", "sb2", timeout=5)
        assert (tmp_path / "sb2").is_dir() and answer.vm_id
        await server.close()
    asyncio.run(scenario())

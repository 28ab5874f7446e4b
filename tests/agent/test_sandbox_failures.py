"""Every failure point of sandbox and container creation undoes what was acquired before it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from kata.config import HypervisorConfig
from kata.errors import AgentError, HypervisorError, KataError, OciError, RpcError
from kata.oci.model import Mount
from kata.sandbox import AsyncSandbox, GuestLayout, OutputBuffer, Sandbox, SandboxError, mounts, startup
from kata.sandbox import container as container_module
from kata.sandbox import sandbox as sandbox_module
from kata.sandbox.mounts import mounts_under
from tests.agent.sandbox_support import HostModeSetup, hostmode_setup, make_bundle
from tests.agent.support import BUSYBOX

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not BUSYBOX.exists(), reason="needs root and busybox")


def assert_nothing_left(setup: HostModeSetup, sandbox_id: str = "sb") -> None:
    assert not (setup.root / sandbox_id).exists()
    assert not mounts_under(setup.root)
    for vm in setup.vms:
        assert vm.pids() == () and vm.state.value in ("new", "stopped")


def create(setup: HostModeSetup, **changes: object) -> Sandbox:
    arguments: dict[str, object] = {"root": setup.root, "guest": setup.layout, "sandbox_id": "sb", **changes}
    return Sandbox.create(setup.config, **arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize("verb", ["prepare", "start"])
def test_a_failing_vm_leaves_nothing(tmp_path: Path, verb: str) -> None:
    setup = hostmode_setup(tmp_path, fail={verb: HypervisorError("no kernel")})
    with pytest.raises(HypervisorError, match="no kernel") as caught:
        create(setup)
    assert "while creating sandbox sb" in caught.value.__notes__
    assert_nothing_left(setup)


def test_an_agent_that_never_answers_fails_within_dial_timeout(tmp_path: Path) -> None:
    setup = hostmode_setup(tmp_path, dial_timeout=1, agent=False)
    with pytest.raises(AgentError, match="cannot connect to the agent"):
        create(setup)
    assert_nothing_left(setup)


def test_create_sandbox_refused_by_the_agent(tmp_path: Path) -> None:
    setup = hostmode_setup(tmp_path)
    outside = GuestLayout(str(tmp_path / "elsewhere"), host_mode=True)  # not the agent's root
    with pytest.raises(RpcError, match="outside"):
        create(setup, guest=outside)
    assert_nothing_left(setup)


@pytest.mark.parametrize("where", ["make_shared", "write_json", "connect_agent"])
def test_host_side_failures_undo_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    setup = hostmode_setup(tmp_path)

    def fail(*args: object, **kwargs: object) -> None:
        raise SandboxError(f"{where} broke")
    module = sandbox_module if where != "make_shared" else startup
    monkeypatch.setattr(module, where, fail)
    with pytest.raises(SandboxError, match=f"{where} broke"):
        create(setup)
    assert_nothing_left(setup)


def test_cancelling_create_undoes_everything(tmp_path: Path) -> None:
    setup = hostmode_setup(tmp_path, dial_timeout=30, agent=False)

    async def scenario() -> None:
        task = asyncio.ensure_future(AsyncSandbox.create(setup.config, root=setup.root, guest=setup.layout,
                                                         sandbox_id="sb"))
        await asyncio.sleep(0.5)
        assert (setup.root / "sb" / "state.json").exists()  # the VM is up, the agent awaited
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(scenario())
    assert_nothing_left(setup)


def test_bad_ids_and_a_missing_shared_fs_fail_before_anything_is_made(tmp_path: Path) -> None:
    setup = hostmode_setup(tmp_path)
    with pytest.raises(SandboxError, match=r"bad sandbox id '\.\./x'"):
        create(setup, sandbox_id="../x")
    setup.config = replace(setup.config, hypervisor=HypervisorConfig(accelerator="tcg", shared_fs="none"))
    with pytest.raises(SandboxError, match="containers need virtio-fs or virtio-9p"):
        create(setup, guest=GuestLayout())
    assert not setup.vms and not setup.root.exists()


def test_an_existing_sandbox_is_left_alone(tmp_path: Path) -> None:
    setup = hostmode_setup(tmp_path)
    with create(setup) as sb:
        with pytest.raises(SandboxError, match="sandbox sb already exists"):
            create(setup)
        assert sb.paths.state_file.exists()
        assert setup.vms[0].pids()


def _fail_second_bind(monkeypatch: pytest.MonkeyPatch) -> None:
    real = mounts.bind
    calls: list[str] = []

    def bind(source: str, target: Path, *, readonly: bool = False) -> None:
        calls.append(source)
        if len(calls) == 2:
            raise SandboxError("bind broke")
        real(source, target, readonly=readonly)
    monkeypatch.setattr(container_module, "bind", bind)


CONTAINER_FAILURES: dict[str, tuple[type[KataError], str]] = {
    "no config.json": (OciError, "config.json"),
    "bad json": (OciError, "invalid JSON"),
    "no rootfs": (OciError, "is not a directory"),
    "bind fails": (SandboxError, "bind broke"),
    "agent refuses": (RpcError, "nosuchfs"),
    "bad id": (SandboxError, "bad container id"),
}


@pytest.mark.parametrize("case", CONTAINER_FAILURES)
def test_container_create_failures_undo_and_the_sandbox_stays_usable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    setup = hostmode_setup(tmp_path)
    volume = tmp_path / "volume"
    volume.mkdir()
    mounts = [Mount(destination="/data", type="bind", source=str(volume), options=("rbind",))]
    if case == "agent refuses":
        mounts.append(Mount(destination="/mnt", type="nosuchfs", source="x"))
    bundle = make_bundle(tmp_path / "b", "echo", "ok", mounts=mounts)
    prepare: dict[str, Callable[[], object]] = {
        "no config.json": (bundle / "config.json").unlink,
        "bad json": lambda: (bundle / "config.json").write_text("{"),
        "no rootfs": lambda: (bundle / "rootfs").rename(bundle / "elsewhere"),
        "bind fails": lambda: _fail_second_bind(monkeypatch),
    }
    prepare.get(case, lambda: None)()
    error, message = CONTAINER_FAILURES[case]
    with create(setup) as sb:
        with pytest.raises(error, match=message):
            sb.create_container(bundle, container_id="bad/id" if case == "bad id" else "c")
        assert not sb.paths.container_share("c").exists() and not sb.paths.container_dir("c").exists()
        assert mounts_under(sb.paths.shared) == [sb.paths.shared]
        assert not sb.containers
        good = make_bundle(tmp_path / "good", "echo", "ok")
        out = OutputBuffer()
        c = sb.create_container(good, container_id="c", stdout=out)
        c.start()
        assert (c.wait(), out.getvalue()) == (0, b"ok\n")
    assert_nothing_left(setup)

"""Host helpers of the sandbox: other processes by pidfd, mounts, request builders, lazy imports."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kata.agent import KernelModule, Storage
from kata.oci import Mount
from kata.sandbox import GuestLayout, SandboxError
from kata.sandbox.mounts import bind, make_shared, mounts_under, remove_tree, source_kinds, unmount
from kata.sandbox.procs import is_alive, process_ref, send_signal, terminate, wait_gone
from kata.sandbox.records import ProcessRef
from kata.sandbox.requests import kernel_modules, sandbox_request, shared_storage

ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts)")


def test_process_refs_survive_pid_reuse_checks_and_stop_a_stranger() -> None:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    ref = process_ref(proc.pid)
    assert ref is not None and is_alive(ref)
    assert not is_alive(ProcessRef(proc.pid, ref.start_time + 1))  # same pid, another process
    assert not send_signal(ProcessRef(proc.pid, ref.start_time + 1), 9)
    asyncio.run(terminate([ref], grace=2))
    assert proc.wait(timeout=5) == -15
    assert not is_alive(ref) and process_ref(proc.pid) is None
    assert asyncio.run(wait_gone([ref], 0.1))


def test_wait_gone_times_out_on_a_live_process() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    ref = process_ref(proc.pid)
    assert ref is not None
    try:
        assert not asyncio.run(wait_gone([ref], 0.05))
    finally:
        proc.kill()
        proc.wait()


def test_mountinfo_parsing_unescapes_and_orders_deepest_first(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "1 0 8:1 / / rw - ext4 /dev/sda rw\n"
        "2 1 8:1 /x /run/kata/s/shared rw shared:5 - ext4 /dev/sda rw\n"
        "3 2 8:1 /y /run/kata/s/shared/c/rootfs rw - ext4 /dev/sda rw\n"
        "4 2 8:1 /z /run/kata/s/shared/c/mounts/0-my\\040dir rw - ext4 /dev/sda rw\n"
        "5 1 8:1 /w /run/kata/s2 rw - ext4 /dev/sda rw\n")
    assert [str(p) for p in mounts_under(Path("/run/kata/s"), str(info))] == [
        "/run/kata/s/shared/c/mounts/0-my dir", "/run/kata/s/shared/c/rootfs", "/run/kata/s/shared"]


@ROOT
def test_remove_tree_unmounts_first_and_never_deletes_through_a_mount(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data").write_text("keep me")
    state = tmp_path / "state"
    (state / "shared" / "c" / "rootfs").mkdir(parents=True)
    make_shared(state / "shared")
    bind(str(precious), state / "shared" / "c" / "rootfs", readonly=True)
    with pytest.raises(OSError, match="Read-only"):
        (state / "shared" / "c" / "rootfs" / "new").write_text("x")
    remove_tree(state)
    assert not state.exists() and (precious / "data").read_text() == "keep me"
    unmount(tmp_path / "never-mounted")  # not mounted: nothing to do


@ROOT
def test_remove_tree_refuses_while_something_stays_mounted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kata.sandbox import mounts

    target = tmp_path / "state" / "m"
    target.mkdir(parents=True)
    bind(str(tmp_path), target)
    monkeypatch.setattr(mounts, "unmount", lambda path: None)  # an unmount that does not happen
    with pytest.raises(SandboxError, match=r"not removing .*still mounted"):
        remove_tree(tmp_path / "state")
    monkeypatch.undo()
    remove_tree(tmp_path / "state")


def test_source_kinds_only_host_dirs_and_files(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    mounts = [Mount(destination="/a", type="bind", source=str(tmp_path)),
              Mount(destination="/b", type="none", source=str(tmp_path / "f"), options=("rbind",)),
              Mount(destination="/c", type="bind", source="/dev/null"),
              Mount(destination="/d", type="bind", source="relative"),
              Mount(destination="/e", type="tmpfs", source=str(tmp_path)),
              Mount(destination="/f", type="bind", source=str(tmp_path / "missing"))]
    assert source_kinds(mounts) == {str(tmp_path): "dir", str(tmp_path / "f"): "file"}


def test_request_builders() -> None:
    vm = GuestLayout()
    assert shared_storage("virtio-fs", vm, "/run/kata/s/shared", "kataShared") == Storage(
        "virtio-fs", "kataShared", "virtiofs", "/run/kata-containers/shared/containers", options=("nodev",))
    assert shared_storage("virtio-9p", vm, "/x", "kataShared").driver == "9p"
    assert shared_storage("virtio-fs", GuestLayout("/g", host_mode=True), "/x", "t") == Storage(
        "bind", "/x", "bind", "/g/shared/containers")
    with pytest.raises(SandboxError, match="'none'"):
        shared_storage("none", vm, "/x", "t")
    assert kernel_modules(["e1000e InterruptThrottleRate=3000", "i915"]) == (
        KernelModule("e1000e", ("InterruptThrottleRate=3000",)), KernelModule("i915"))
    request = sandbox_request("s", hostname="h", dns=["1.1.1.1"], storages=[], modules=[" ", "vsock"])
    assert (request.hostname, request.dns, request.kernel_modules) == ("h", ("1.1.1.1",), (KernelModule("vsock"),))


def test_import_kata_stays_cheap_and_the_api_is_lazy() -> None:
    code = ("import sys, kata, kata.sandbox\n"
            "assert 'asyncio' not in sys.modules, 'kata imported asyncio'\n"
            "from kata.sandbox import timeline\n"
            "assert 'asyncio' not in sys.modules and 'google.protobuf' not in sys.modules\n"
            "assert kata.run is kata.sandbox.run and kata.Sandbox.__name__ == 'Sandbox'\n"
            "print(sorted(kata.__all__))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    import kata
    from kata.image.python_runtime import imports_of

    with pytest.raises(AttributeError):
        getattr(kata, "nope")  # noqa: B009
    # The guest image carries kata/__init__.py but not the API: its import scan must not see kata.sandbox.
    names = imports_of(Path(kata.__file__).read_text(), "kata", is_package=True)
    assert not any(name.lstrip("?").startswith("kata.sandbox") for name in names), names

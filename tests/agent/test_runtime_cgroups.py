"""Containers in a throwaway cgroup v2: membership, pause/resume, limits, stats, removal."""

from __future__ import annotations

import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest

from kata.errors import StateError
from kata.guest.runtime import CgroupError, ContainerRuntime, ContainerState
from kata.oci import Pids, Resources
from tests.agent.support import exec_process, make_spec, run, run_exec, with_linux


def cgroup_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cgroup").read_text().strip().rpartition("::")[2]


def unified_path(directory: Path) -> str:
    return "/" + str(directory.relative_to("/sys/fs/cgroup/unified"))


def cpu_usage(runtime: ContainerRuntime) -> int:
    stats = runtime.stats_container("c1").cgroup
    assert stats is not None and stats.cpu is not None
    return stats.cpu.usage_ns


def test_container_and_exec_processes_live_in_the_container_cgroup(
    cgroup_runtime: ContainerRuntime, cgroup_root: Path, rootfs: Path
) -> None:
    mounts = Path("/proc/self/mountinfo").read_text()
    info = cgroup_runtime.create_container("c1", make_spec(rootfs, "sleep", "60"))
    assert info.cgroup_path == f"{cgroup_root}/kata/c1"
    assert cgroup_of(info.pid) == unified_path(cgroup_root / "kata" / "c1")
    cgroup_runtime.start_container("c1")
    pid = cgroup_runtime.exec_process("c1", "e1", exec_process("sleep", "60"))
    assert cgroup_of(pid) == cgroup_of(info.pid)
    assert sorted(cgroup_runtime.pids("c1")) == sorted((info.pid, pid))
    cgroup_runtime.remove_container("c1", timeout=10)
    assert not (cgroup_root / "kata" / "c1").exists()
    assert not Path(f"/proc/{info.pid}").exists() and not Path(f"/proc/{pid}").exists()
    assert Path("/proc/self/mountinfo").read_text() == mounts  # all mounts were in its namespace


def test_container_sees_its_cgroup_as_the_root(cgroup_runtime: ContainerRuntime, rootfs: Path) -> None:
    spec = make_spec(rootfs, "sh", "-c", "grep ^0:: /proc/self/cgroup; ls /sys/fs/cgroup")
    result = run(cgroup_runtime, spec)
    first, *files = result.stdout.split()
    assert first == "0::/"
    assert "cgroup.procs" in files


def test_pause_and_resume(cgroup_runtime: ContainerRuntime, cgroup_root: Path, rootfs: Path) -> None:
    cgroup_runtime.create_container("c1", make_spec(rootfs, "sh", "-c", "while true; do :; done"))
    cgroup_runtime.start_container("c1")
    cgroup_runtime.pause_container("c1")
    assert cgroup_runtime.container_info("c1").state is ContainerState.PAUSED
    assert "frozen 1" in (cgroup_root / "kata" / "c1" / "cgroup.events").read_text()
    frozen_at = cpu_usage(cgroup_runtime)
    time.sleep(0.2)
    assert cpu_usage(cgroup_runtime) == frozen_at
    with pytest.raises(StateError, match="pause container c1: state is paused, requires running"):
        cgroup_runtime.pause_container("c1")
    cgroup_runtime.resume_container("c1")
    assert cgroup_runtime.container_info("c1").state is ContainerState.RUNNING
    time.sleep(0.2)
    assert cpu_usage(cgroup_runtime) > frozen_at
    cgroup_runtime.pause_container("c1")
    cgroup_runtime.remove_container("c1", timeout=10)  # a paused container can be removed
    assert not (cgroup_root / "kata" / "c1").exists()


def test_signal_all_reaches_processes_init_started(cgroup_runtime: ContainerRuntime, rootfs: Path) -> None:
    script = "trap 'exit 5' TERM; sleep 60 & echo started; wait"
    cgroup_runtime.create_container("c1", make_spec(rootfs, "sh", "-c", script))
    cgroup_runtime.start_container("c1")
    assert cgroup_runtime.read_stdout("c1", "", 100) == b"started\n"
    assert len(cgroup_runtime.pids("c1")) == 2
    cgroup_runtime.signal_process("c1", "", signal.SIGTERM)
    assert cgroup_runtime.wait_process("c1", "", timeout=10) == 5


def test_limits_at_create_and_update(
    cgroup_runtime: ContainerRuntime, cgroup_root: Path, rootfs: Path
) -> None:
    spec = with_linux(make_spec(rootfs, "sleep", "60"), cgroups_path="/pods/mine",
                      resources=Resources(unified={"cgroup.max.descendants": "3"}))
    info = cgroup_runtime.create_container("c1", spec)
    directory = cgroup_root / "pods" / "mine"
    assert info.cgroup_path == str(directory)
    assert (directory / "cgroup.max.descendants").read_text() == "3\n"
    cgroup_runtime.update_container("c1", Resources(unified={"cgroup.max.depth": "2"}))
    assert (directory / "cgroup.max.depth").read_text() == "2\n"
    if "pids" not in (directory / "cgroup.controllers").read_text().split():
        with pytest.raises(CgroupError, match=r"pids.max: no such file \(controller not enabled\?\)"):
            cgroup_runtime.update_container("c1", Resources(pids=Pids(limit=10)))
    cgroup_runtime.remove_container("c1", timeout=10)
    assert not directory.exists()


def test_stats(cgroup_runtime: ContainerRuntime, rootfs: Path) -> None:
    busy = "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done"
    cgroup_runtime.create_container("c1", make_spec(rootfs, "sh", "-c", busy))
    cgroup_runtime.start_container("c1")
    cgroup_runtime.wait_process("c1", "", timeout=10)
    stats = cgroup_runtime.stats_container("c1")
    assert stats.cgroup is not None and stats.cgroup.cpu is not None
    assert stats.cgroup.cpu.usage_ns > 0
    cgroup_runtime.remove_container("c1")


def test_stats_include_the_network_namespace(runtime: ContainerRuntime, rootfs: Path) -> None:
    runtime.create_container("c1", make_spec(rootfs, "sleep", "60"))
    stats = runtime.stats_container("c1")
    assert stats.cgroup is None
    assert "lo" in {interface.name for interface in stats.network}


def test_failed_create_removes_the_cgroup(
    cgroup_runtime: ContainerRuntime, cgroup_root: Path, rootfs: Path
) -> None:
    spec = make_spec(rootfs, "true")
    spec = replace(spec, hostname="x" * 100)  # sethostname refuses more than 64 bytes
    with pytest.raises(Exception, match="sethostname: Invalid argument"):
        cgroup_runtime.create_container("c1", spec)
    assert [p for p in (cgroup_root / "kata").iterdir() if p.is_dir()] == []


def test_exec_joins_the_cgroup_namespace(cgroup_runtime: ContainerRuntime, rootfs: Path) -> None:
    cgroup_runtime.create_container("c1", make_spec(rootfs, "sleep", "60"))
    cgroup_runtime.start_container("c1")
    result = run_exec(cgroup_runtime, "c1", "e1", exec_process("grep", "^0::", "/proc/self/cgroup"))
    assert result.stdout == "0::/\n"

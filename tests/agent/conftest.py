"""Fixtures of the host-mode runtime tests: a runtime per test, a throwaway cgroup, leak checks."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kata.guest.log import GuestLog
from kata.guest.runtime import ContainerRuntime, ThreadWatcher
from tests.agent.support import BUSYBOX, make_rootfs

UNIFIED = Path("/sys/fs/cgroup/unified")


def _requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root (namespaces, mounts)"
    if not BUSYBOX.exists():
        return f"needs a static busybox at {BUSYBOX}"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip the runtime tests (not the pure ones) where they cannot run."""
    reason = _requirements()
    if reason is None:
        return
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "runtime" in fixtures or "cgroup_runtime" in fixtures or "rootfs" in fixtures:
            item.add_marker(pytest.mark.skip(reason=reason))


def _descendants() -> set[int]:
    """Processes below this pytest (a child subreaper: orphans stay below it), threads excluded."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    me = os.getpid()
    found = set()
    for pid in parents:
        ancestor = parents.get(pid, 0)
        while ancestor > 1:
            if ancestor == me:
                found.add(pid)
                break
            ancestor = parents.get(ancestor, 0)
    return found


@pytest.fixture(autouse=True)
def no_child_processes() -> Iterator[None]:
    """Fail a test that leaves a process of its containers behind."""
    before = _descendants()
    yield
    deadline = time.monotonic() + 2
    while (left := _descendants() - before) and time.monotonic() < deadline:
        time.sleep(0.01)
    if left:
        pytest.fail(f"test left processes behind: {sorted(left)}", pytrace=False)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A throwaway busybox rootfs."""
    return make_rootfs(tmp_path)


@pytest.fixture
def runtime() -> Iterator[ContainerRuntime]:
    """A runtime without cgroups; every container it still has is removed afterwards."""
    runtime = ContainerRuntime(ThreadWatcher(), cgroup_root=None, log=GuestLog(level="warning"))
    yield runtime
    runtime.close()


def _cgroup_skip_reason() -> str | None:
    if not (UNIFIED / "cgroup.procs").exists():
        return f"no cgroup v2 hierarchy at {UNIFIED}"
    probe = UNIFIED / f"pykata-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
    except OSError as exc:
        return f"cannot create a cgroup under {UNIFIED}: {exc.strerror}"
    try:
        if not (probe / "cgroup.freeze").exists():
            return f"{UNIFIED} has no cgroup.freeze (kernel older than 5.2)"
    finally:
        probe.rmdir()
    return None


def _remove_tree(path: Path) -> None:
    for directory, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
        os.rmdir(directory)


@pytest.fixture
def cgroup_root() -> Iterator[Path]:
    """A throwaway cgroup under the host's cgroup v2 mount (skips when there is none usable)."""
    reason = _cgroup_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    root = UNIFIED / f"pykata-test-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    yield root
    _remove_tree(root)


@pytest.fixture
def cgroup_runtime(cgroup_root: Path) -> Iterator[ContainerRuntime]:
    """A runtime that puts each container in a cgroup under ``cgroup_root``."""
    runtime = ContainerRuntime(ThreadWatcher(), cgroup_root=str(cgroup_root), log=GuestLog(level="warning"),
                               oom_interval=0.05)
    yield runtime
    runtime.close()

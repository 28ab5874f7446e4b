"""Suite-wide fixtures: every test must leave no VMM process, mount, tap, netns or state dir behind."""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

WATCHED_PROCESSES = ("qemu-system-x86_64", "virtiofsd", "containerd-shim-kata-v2", "kata-runtime")
STATE_ROOTS = (Path("/run/kata"), Path("/run/vc"))
# Tests (and developers' ad-hoc runs: `flock /tmp/pykata-vm.lock CMD`) that boot guests hold this
# lock, so two VM suites never compete for the 2 cores at once.
VM_LOCK = Path("/tmp/pykata-vm.lock")
PR_SET_CHILD_SUBREAPER = 36
PYTEST_TMP_PREFIX = "/tmp/pytest-of-"
# Made once per host by the first user and kept by design, so not a test's leak: the /run/netns mount
# (bound on itself and made shared with the first named netns, as `ip netns add` does; the netns files
# in it are still checked) and podman's default network bridge (made by its first container on it).
HOST_SINGLETONS = {"mounts": frozenset({"/run/netns"}), "links": frozenset({"cni-podman0"})}


def _parent_of(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rpartition(")")[2].split()[1])


def _is_ours(pid: int) -> bool:
    """Whether ``pid`` descends from this pytest process (a subreaper: orphans stay below it)."""
    me = os.getpid()
    while pid > 1:
        pid = _parent_of(pid)
        if pid == me:
            return True
    return False


def _processes() -> dict[int, str]:
    """Watched processes started by this test run (other developers' VMs are not ours)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        name = os.path.basename(argv[0])
        if name.startswith("python") and len(argv) > 1:  # console scripts run under the venv python
            name = os.path.basename(argv[1])
        if name in WATCHED_PROCESSES and _is_ours(int(entry.name)):
            found[int(entry.name)] = name
    return found


def pytest_configure(config: pytest.Config) -> None:
    """Become a child subreaper, so daemons the tests start (shims, VMMs) stay our descendants."""
    del config
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _listing(path: Path) -> frozenset[str]:
    try:
        return frozenset(p.name for p in path.iterdir())
    except OSError:
        return frozenset()


@dataclass(frozen=True)
class HostSnapshot:
    """What a test could leak, as sets that can be diffed."""

    processes: frozenset[tuple[int, str]]
    mounts: frozenset[str]
    links: frozenset[str]
    netns: frozenset[str]
    state: frozenset[str]

    @classmethod
    def take(cls) -> HostSnapshot:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        return cls(
            processes=frozenset(_processes().items()),
            mounts=frozenset(line.split()[4] for line in mounts),
            links=_listing(Path("/sys/class/net")),
            netns=_listing(Path("/run/netns")),
            state=frozenset(f"{root}/{name}" for root in STATE_ROOTS for name in _listing(root)),
        )

    def leaked_since(self, before: HostSnapshot) -> dict[str, list[str]]:
        leaks = {
            "processes": sorted(f"{pid} {name}" for pid, name in self.processes - before.processes),
            "mounts": sorted(self.mounts - before.mounts - HOST_SINGLETONS["mounts"]),
            "links": sorted(self.links - before.links - HOST_SINGLETONS["links"]),
            "netns": sorted(self.netns - before.netns),
            "state dirs": sorted(self.state - before.state),
        }
        return {kind: items for kind, items in leaks.items() if items}


def _foreign_mount(path: str, basetemp: Path) -> bool:
    """A mount in another pytest session's temporary tree (a developer running tests beside us)."""
    return path.startswith(PYTEST_TMP_PREFIX) and not path.startswith(f"{basetemp}/")


def _ours(pid: int) -> bool:
    """Whether ``pid`` descends from this pytest process (a VMM, shim or daemon a test started and that
    was not reparented)."""
    me = os.getpid()
    while pid > 1:
        if pid == me:
            return True
        pid = _parent_of(pid)
    return False


def _foreign_process(pid: int, basetemp: Path) -> bool:
    """Another pytest session's process: not ours, and its command line names that session's temporary
    tree (its sockets, state dirs and shares live there)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return not _ours(pid) and PYTEST_TMP_PREFIX in argv and str(basetemp) not in argv


@pytest.fixture(autouse=True)
def no_leaks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the test if it left a VMM/shim process, mount, link, netns or state dir behind."""
    basetemp = tmp_path_factory.getbasetemp()
    before = HostSnapshot.take()
    yield
    leaks = HostSnapshot.take().leaked_since(before)
    mounts = [m for m in leaks.pop("mounts", []) if not _foreign_mount(m, basetemp)]
    if mounts:
        leaks["mounts"] = mounts
    processes = [line for line in leaks.pop("processes", []) if not _foreign_process(int(line.split()[0]), basetemp)]
    for line in processes:
        # Kill what leaked so one bad test does not fail every later one; only ours: another session's VMM
        # (a suite or bench running beside us) appearing meanwhile is not our leak to kill.
        if _ours(int(line.split()[0])):
            os.kill(int(line.split()[0]), signal.SIGKILL)
    if processes:
        leaks["processes"] = processes
    if leaks:
        pytest.fail(f"test left resources behind: {leaks}", pytrace=False)


def _under_flock_command() -> bool:
    """Whether an ancestor is ``flock VM_LOCK ...`` (taking the lock again would deadlock)."""
    pid = os.getpid()
    while pid > 1:
        pid = _parent_of(pid)
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        if os.path.basename(argv[0]) == b"flock" and str(VM_LOCK).encode() in argv:
            return True
    return False


@pytest.fixture(autouse=True)
def vm_lock(request: pytest.FixtureRequest) -> Iterator[None]:
    """Serialize tests marked ``vm`` or ``e2e`` across processes through an flock."""
    marked = request.node.get_closest_marker("vm") or request.node.get_closest_marker("e2e")
    if marked is None or _under_flock_command():
        yield
        return
    with VM_LOCK.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield

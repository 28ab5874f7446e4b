"""Pure parts of the runtime: secure joins, mount options, spec checks, state transitions."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from kata.errors import OciError, StateError
from kata.guest.runtime import PathEscapeError, UnsupportedError
from kata.guest.runtime import syscalls as sc
from kata.guest.runtime.mountopts import plan_mount
from kata.guest.runtime.plan import DEFAULT_PATH, plan_container, plan_process
from kata.guest.runtime.securejoin import clean_path, escapes, secure_join
from kata.guest.runtime.state import ContainerState, ProcessState, advance, require
from kata.oci import Mount, Namespace, Process, Root, default_spec
from tests.agent.support import make_spec, with_linux


def test_secure_join_clamps_dotdot_and_absolute_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "up").symlink_to("../../../../..")
    (root / "abs").symlink_to("/a/b")
    (root / "loop").symlink_to("loop")
    (root / "hostetc").symlink_to("/etc")
    assert secure_join(str(root), "/a/up/etc/passwd") == f"{root}/etc/passwd"
    assert secure_join(str(root), "../../x") == f"{root}/x"
    assert secure_join(str(root), "/abs/c/../d") == f"{root}/a/b/d"
    assert secure_join(str(root), "/missing/../a") == f"{root}/a"
    assert secure_join(str(root), "/hostetc/shadow") == f"{root}/etc/shadow"
    assert secure_join(str(root), "/") == str(root)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        secure_join(str(root), "/loop/x")


def test_clean_path_and_escapes() -> None:
    assert clean_path("a/./b//../c/") == "/a/c"
    assert clean_path("/../..") == "/"
    assert escapes("/a/../../b") and escapes("..")
    assert not escapes("/a/../b") and not escapes("/a/..")


def test_mount_options_follow_runc() -> None:
    step = plan_mount(Mount(destination="/dev/pts/", type="devpts", source="devpts",
                            options=("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620")), 0)
    assert (step.destination, step.fstype, step.flags) == ("/dev/pts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC)
    assert step.data == "newinstance,ptmxmode=0666,mode=0620"
    assert not step.bind and not step.remount
    bind = plan_mount(Mount(destination="/x", type="none", source="/src", options=("rbind", "ro", "rslave")),
                      1)
    assert bind.bind and bind.remount and bind.fstype == ""
    assert bind.flags == sc.MS_BIND | sc.MS_REC | sc.MS_RDONLY
    assert bind.propagation == (sc.MS_SLAVE | sc.MS_REC,)
    cleared = plan_mount(Mount(destination="/y", type="tmpfs", options=("ro", "rw", "nosuid", "suid")), 2)
    assert cleared.flags == 0 and not cleared.readonly_later
    later = plan_mount(Mount(destination="/z", type="tmpfs", options=("ro",)), 3)
    assert later.readonly_later and later.flags == 0
    cgroup = plan_mount(Mount(destination="/sys/fs/cgroup", type="cgroup", source="cgroup"), 4)
    assert cgroup.fstype == "cgroup2"


def test_mount_errors_name_the_field() -> None:
    with pytest.raises(UnsupportedError, match=r"mounts\[2\].options: 'rro' is not supported"):
        plan_mount(Mount(destination="/x", type="bind", source="/s", options=("rro",)), 2)
    with pytest.raises(OciError, match=r"mounts\[0\].source: a bind mount needs an absolute source"):
        plan_mount(Mount(destination="/x", type="bind", source="rel", options=("bind",)), 0)
    with pytest.raises(OciError, match=r"mounts\[0\].type: 'none' needs a bind or rbind option"):
        plan_mount(Mount(destination="/x", type="none", source="/s"), 0)
    with pytest.raises(PathEscapeError, match=r"mounts\[0\].destination: ../x escapes"):
        plan_mount(Mount(destination="../x", type="tmpfs"), 0)


def test_plan_of_runc_default_spec(tmp_path: Path) -> None:
    plan = plan_container("c1", make_spec(tmp_path, "sh"))
    flags = sc.CLONE_NEWPID | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS | sc.CLONE_NEWNS
    assert (plan.namespaces.unshare, plan.namespaces.cgroup, plan.namespaces.joins) == (flags, True, ())
    assert plan.rootfs.propagation == sc.MS_SLAVE | sc.MS_REC
    assert not plan.rootfs.default_dev and plan.rootfs.populate_dev
    assert plan.process.search_path == ("/bin",)
    assert plan.process.rlimits == ((7, 1024, 1024, "RLIMIT_NOFILE"),)
    assert plan.seccomp is None


def test_plan_joins_namespaces_mount_last(tmp_path: Path) -> None:
    spec = with_linux(make_spec(tmp_path, "sh"), namespaces=(
        Namespace(type="mount", path="/proc/1/ns/mnt"), Namespace(type="network"),
        Namespace(type="pid", path="/proc/1/ns/pid"), Namespace(type="uts")))
    plan = plan_container("c1", spec, sandbox_netns="/run/netns/sb")
    assert [kind for kind, _, _ in plan.namespaces.joins] == ["pid", "network", "mount"]
    assert plan.namespaces.unshare == sc.CLONE_NEWUTS


def test_plan_errors(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "sh")
    with pytest.raises(OciError, match=r"root\.path: must be an absolute path in the guest"):
        plan_container("c1", replace(spec, root=Root(path="rootfs")))
    with pytest.raises(UnsupportedError, match="a mount namespace is required"):
        plan_container("c1", with_linux(spec, namespaces=(Namespace(type="pid"),)))
    with pytest.raises(OciError, match="hostname: needs a uts namespace"):
        plan_container("c1", replace(with_linux(spec, namespaces=(Namespace(type="mount"),)), hostname="h"))
    with pytest.raises(PathEscapeError, match=r"linux\.maskedPaths\[0\]: /proc/\.\./\.\./x escapes"):
        plan_container("c1", with_linux(spec, masked_paths=("/proc/../../x",)))
    with pytest.raises(OciError, match=r"linux\.sysctl: invalid key '\.\./x'"):
        plan_container("c1", with_linux(spec, sysctl={"../x": "1"}))
    with pytest.raises(OciError, match=r"process\.cwd: must be an absolute path"):
        plan_process(Process(args=("sh",), cwd="tmp"))


def test_plan_process_env_and_path() -> None:
    plan = plan_process(Process(args=("sh",), cwd="/", env=("A=1", "PATH=/x::/y", "B")))
    assert plan.env == (("A", "1"), ("PATH", "/x::/y"), ("B", ""))
    assert plan.search_path == ("/x", ".", "/y")
    assert plan_process(Process(args=("sh",), cwd="/")).search_path == tuple(DEFAULT_PATH.split(":"))
    assert plan.capabilities is None and plan.umask == 0o022


def test_state_tables_and_guards() -> None:
    assert advance("c", ContainerState.CREATED, ContainerState.RUNNING) is ContainerState.RUNNING
    assert advance("p", ProcessState.RUNNING, ProcessState.EXITED) is ProcessState.EXITED
    with pytest.raises(StateError, match="c: cannot go from stopped to running") as caught:
        advance("c", ContainerState.STOPPED, ContainerState.RUNNING)
    assert caught.value.required == ("created", "paused")
    require("x", ContainerState.RUNNING, ContainerState.RUNNING, ContainerState.PAUSED)
    with pytest.raises(StateError, match="x: state is created, requires running or paused"):
        require("x", ContainerState.CREATED, ContainerState.RUNNING, ContainerState.PAUSED)


def test_runtime_imports_stay_guest_friendly() -> None:
    """No subprocess, asyncio, logging or json: in the guest every import is paid at boot."""
    code = ("import sys; import kata.guest.runtime; "
            "print(sorted({'subprocess', 'asyncio', 'logging', 'json', 'resource', 'termios'}"
            " & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "[]\n"


def test_default_spec_is_valid_for_the_runtime() -> None:
    spec = default_spec()
    assert spec.root is not None
    plan = plan_container("c1", replace(spec, root=replace(spec.root, path="/r")))
    assert plan.rootfs.readonly and plan.process.terminal

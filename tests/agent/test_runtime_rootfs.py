"""The container's filesystem: mounts, /dev, masked and read-only paths, symlinks that try to escape."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import pytest

from kata.guest.log import GuestLog
from kata.guest.runtime import ContainerRuntime, PathEscapeError, ThreadWatcher
from kata.oci import Device, Mount, Root, Spec
from tests.agent.support import exec_process, make_spec, run, run_exec, with_linux


def sh(rootfs: Path, script: str) -> Spec:
    return make_spec(rootfs, "sh", "-c", script)


def test_old_root_is_gone(runtime: ContainerRuntime, rootfs: Path) -> None:
    result = run(runtime, sh(rootfs, "ls /; cat /proc/self/mountinfo"))
    listing, _, mountinfo = result.stdout.partition("tmp\n")
    assert listing.split() == ["bin", "dev", "etc", "proc", "root", "sys"]
    mount_points = [line.split()[4] for line in mountinfo.splitlines()]
    assert mount_points[0] == "/"
    assert not any(point.startswith(("/work", "/tmp")) for point in mount_points)


def test_default_dev_has_the_standard_nodes(runtime: ContainerRuntime, rootfs: Path) -> None:
    spec = sh(rootfs, "ls /dev; head -c 5 /dev/zero | wc -c; echo x > /dev/null && echo null-ok;"
              " touch /dev/shm/f && echo shm-ok; readlink /dev/ptmx; readlink /dev/fd")
    spec = replace(spec, mounts=tuple(m for m in spec.mounts if not m.destination.startswith("/dev")))
    lines = run(runtime, spec).stdout.split()
    assert lines[:15] == ["fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout",
                          "tty", "urandom", "zero", "5", "null-ok"]
    assert lines[15:] == ["shm-ok", "pts/ptmx", "/proc/self/fd"]


def test_masked_paths_read_empty(runtime: ContainerRuntime, rootfs: Path) -> None:
    (rootfs / "etc" / "secret").write_text("password")
    (rootfs / "private").mkdir()
    (rootfs / "private" / "key").write_text("key")
    script = "cat /etc/secret; ls /private; wc -c < /proc/version; ls /sys/firmware | wc -l"
    spec = with_linux(sh(rootfs, script),
                      masked_paths=("/etc/secret", "/private", "/proc/version", "/sys/firmware", "/none"))
    assert run(runtime, spec).stdout.split() == ["0", "0"]


def test_readonly_paths_refuse_writes(runtime: ContainerRuntime, rootfs: Path) -> None:
    (rootfs / "data").mkdir()
    spec = with_linux(sh(rootfs, "touch /data/x || echo refused; touch /tmp/y && echo tmp-ok"),
                      readonly_paths=("/data", "/missing"))
    result = run(runtime, spec)
    assert "Read-only file system" in result.stderr
    assert result.stdout == "refused\ntmp-ok\n"


def test_readonly_root(runtime: ContainerRuntime, rootfs: Path) -> None:
    spec = replace(sh(rootfs, "touch /x || echo refused; touch /dev/shm/y && echo shm-ok"),
                   root=Root(path=str(rootfs), readonly=True))
    result = run(runtime, spec)
    assert result.stdout == "refused\nshm-ok\n"
    assert not (rootfs / "x").exists()


def test_mount_through_a_symlink_out_of_the_rootfs_stays_inside(
    runtime: ContainerRuntime, rootfs: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (rootfs / "abs").symlink_to(outside)  # absolute: resolved as if the rootfs were "/"
    (rootfs / "rel").symlink_to("../../../../../../../../" + str(outside))
    mounts = tuple(Mount(destination=d, type="tmpfs", source="tmpfs") for d in ("/abs/new", "/rel/other"))
    spec = sh(rootfs, "grep -c ' /abs/new \\| /rel/other ' /proc/self/mountinfo")
    spec = replace(spec, mounts=(*spec.mounts, *mounts))
    assert run(runtime, spec).stdout == "0\n"  # the mount points are the resolved ones, inside
    assert list(outside.iterdir()) == []
    inside = rootfs / str(outside).lstrip("/")
    assert sorted(p.name for p in inside.iterdir()) == ["new", "other"]


def test_destination_climbing_out_with_dotdot_is_an_error(runtime: ContainerRuntime, rootfs: Path) -> None:
    spec = sh(rootfs, "true")
    spec = replace(spec, mounts=(*spec.mounts, Mount(destination="/../etc", type="tmpfs", source="tmpfs")))
    with pytest.raises(PathEscapeError, match=r"mounts\[7\].destination: /../etc escapes") as caught:
        runtime.create_container("c1", spec)
    assert caught.value.path == "/../etc"


def test_bind_mounts_with_options(runtime: ContainerRuntime, rootfs: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "file").write_text("from the host\n")
    single = tmp_path / "single.txt"
    single.write_text("one file\n")
    mounts = (
        Mount(destination="/mnt/ro", type="bind", source=str(shared), options=("rbind", "ro", "nosuid")),
        Mount(destination="/etc/single.txt", type="none", source=str(single), options=("bind", "rprivate")),
        Mount(destination="/scratch", type="tmpfs", source="tmpfs", options=("mode=1777", "size=1m", "ro")),
    )
    script = ("cat /mnt/ro/file /etc/single.txt; touch /mnt/ro/x || echo ro; stat -c %a /scratch;"
              " touch /scratch/x || echo scratch-ro")
    spec = sh(rootfs, script)
    result = run(runtime, replace(spec, mounts=(*spec.mounts, *mounts)))
    assert result.stdout == "from the host\none file\nro\n1777\nscratch-ro\n"
    assert sorted(p.name for p in shared.iterdir()) == ["file"]


def test_sysctl_is_set_in_the_container_namespaces(runtime: ContainerRuntime, rootfs: Path) -> None:
    host = Path("/proc/sys/kernel/msgmax").read_text()
    spec = with_linux(sh(rootfs, "cat /proc/sys/kernel/msgmax"), sysctl={"kernel.msgmax": "12345"})
    assert run(runtime, spec).stdout == "12345\n"
    assert Path("/proc/sys/kernel/msgmax").read_text() == host


def test_devices_are_created(runtime: ContainerRuntime, rootfs: Path) -> None:
    device = Device(path="/dev/mynull", type="c", major=1, minor=3, file_mode=0o604, uid=1000, gid=2000)
    spec = with_linux(sh(rootfs, "stat -c '%t:%T %a %u:%g' /dev/mynull; cat /dev/mynull && echo ok"),
                      devices=(device,))
    assert run(runtime, spec).stdout == "1:3 604 1000:2000\nok\n"


def test_no_pivot_moves_the_root_and_exec_still_finds_it(rootfs: Path) -> None:
    runtime = ContainerRuntime(ThreadWatcher(), cgroup_root=None, log=GuestLog(level="warning"),
                               no_pivot=True)
    try:
        (rootfs / "marker").write_text("moved\n")
        runtime.create_container("c1", make_spec(rootfs, "sleep", "60"))
        runtime.start_container("c1")
        result = run_exec(runtime, "c1", "e1", exec_process("sh", "-c", "cat /marker; ls / | wc -l"))
        assert result.stdout == "moved\n8\n"
    finally:
        runtime.close()


def test_shared_rootfs_propagation(runtime: ContainerRuntime, rootfs: Path) -> None:
    spec = with_linux(sh(rootfs, "grep -c shared: /proc/self/mountinfo; true"), rootfs_propagation="rshared")
    assert int(run(runtime, spec).stdout) > 0


def test_spec_dev_tmpfs_is_populated(runtime: ContainerRuntime, rootfs: Path) -> None:
    result = run(runtime, sh(rootfs, "stat -c '%F %t:%T' /dev/null /dev/tty; cat /proc/self/mountinfo"))
    null, tty, *mountinfo = result.stdout.splitlines()
    assert (null, tty) == ("character special file 1:3", "character special file 5:0")
    dev = next(line for line in mountinfo if line.split()[4] == "/dev")
    assert "tmpfs" in dev and stat.filemode(0o755)

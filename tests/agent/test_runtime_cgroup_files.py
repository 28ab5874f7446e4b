"""Pure cgroup logic: runc's resource conversions, cgroup paths, stats parsers and the OOM monitor."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from kata.errors import OciError
from kata.guest.runtime import RuntimeClosedError
from kata.guest.runtime.cgroups import Cgroup, cgroup_path, parse_max, resource_files
from kata.guest.runtime.oom import OomMonitor
from kata.guest.runtime.process import ExitLatch, exit_status
from kata.guest.runtime.stats import parse_io_stat, parse_net_dev
from kata.oci import (
    CPU,
    BlockIO,
    HugepageLimit,
    Memory,
    Pids,
    Rdma,
    Resources,
    ThrottleDevice,
    WeightDevice,
)

NET_DEV = """Inter-|   Receive                    |  Transmit
 face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls
    lo: 100 2 0 0 0 0 0 0 100 2 0 0 0 0 0 0
  eth0: 5000 40 1 2 0 0 0 0 7000 50 3 4 0 0 0 0
"""


def test_resource_conversions_follow_runc() -> None:
    resources = Resources(
        memory=Memory(limit=1 << 30, reservation=1 << 29, swap=(1 << 30) + (1 << 20)),
        cpu=CPU(shares=1024, quota=50000, period=100000, cpus="0-1", mems="0"),
        pids=Pids(limit=100),
        block_io=BlockIO(weight=500, weight_device=(WeightDevice(major=8, minor=0, weight=300),),
                         throttle_read_bps_device=(ThrottleDevice(major=8, minor=0, rate=1000),)),
        hugepage_limits=(HugepageLimit(page_size="2MB", limit=4 << 20),),
        rdma={"mlx5_0": Rdma(hca_handles=3)},
        unified={"memory.high": "900000000"},
    )
    assert resource_files(resources) == [
        ("cpu.weight", "39"), ("cpu.max", "50000 100000"), ("cpuset.cpus", "0-1"), ("cpuset.mems", "0"),
        ("memory.low", str(1 << 29)), ("memory.max", str(1 << 30)), ("memory.swap.max", str(1 << 20)),
        ("pids.max", "100"), ("io.weight", "default 4950"), ("io.weight", "8:0 300"),
        ("io.max", "8:0 rbps=1000"),
        ("hugetlb.2MB.max", str(4 << 20)), ("rdma.max", "mlx5_0 hca_handle=3"), ("memory.high", "900000000"),
    ]


def test_unlimited_values() -> None:
    assert resource_files(Resources(memory=Memory(limit=-1), cpu=CPU(quota=-1), pids=Pids(limit=0))) == [
        ("cpu.max", "max 100000"), ("memory.max", "max"), ("memory.swap.max", "max"), ("pids.max", "max")]
    assert resource_files(Resources(memory=Memory(limit=100, swap=-1))) == [
        ("memory.max", "100"), ("memory.swap.max", "max")]


def test_impossible_resources_name_the_field() -> None:
    with pytest.raises(OciError, match=r"memory\.swap: must be at least"):
        resource_files(Resources(memory=Memory(limit=100, swap=50)))
    with pytest.raises(OciError, match=r"memory\.swap: a swap limit needs a memory limit"):
        resource_files(Resources(memory=Memory(swap=50)))
    with pytest.raises(OciError, match=r"unified: invalid key '\.\./x'"):
        resource_files(Resources(unified={"../x": "1"}))


def test_cgroup_paths() -> None:
    assert cgroup_path("/sys/fs/cgroup", "c1", "") == "/sys/fs/cgroup/kata/c1"
    assert cgroup_path("/sys/fs/cgroup/", "c1", "/kubepods/pod1/c1") == "/sys/fs/cgroup/kubepods/pod1/c1"
    assert cgroup_path("/cg", "c1", "relative/c1") == "/cg/relative/c1"
    assert cgroup_path("/cg", "c1", "kubepods-pod1.slice:cri-containerd:abc") == \
        "/cg/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope"
    with pytest.raises(OciError, match=r"linux\.cgroupsPath: \.\./\.\./etc escapes the cgroup root"):
        cgroup_path("/cg", "c1", "../../etc")


def test_parsers() -> None:
    assert parse_max("max\n") is None and parse_max("100 200\n") == 100
    (device,) = parse_io_stat("8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n")
    assert (device.major, device.minor, device.read_bytes, device.write_ios) == (8, 0, 10, 2)
    lo, eth0 = parse_net_dev(NET_DEV)
    assert (lo.name, lo.rx_bytes, eth0.tx_bytes, eth0.rx_dropped, eth0.tx_errors) == ("lo", 100, 7000, 2, 3)


def test_stats_of_a_fake_cgroup_directory(tmp_path: Path) -> None:
    files = {"memory.current": "4096\n", "memory.max": "max\n", "memory.stat": "anon 10\nfile 20\n",
             "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
             "cpu.stat": "usage_usec 7\nuser_usec 5\n", "pids.current": "3\n", "pids.max": "10\n",
             "hugetlb.2MB.current": "0\n", "hugetlb.2MB.max": "max\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    stats = Cgroup(str(tmp_path)).stats()
    assert stats.memory is not None and stats.cpu is not None and stats.pids is not None
    assert (stats.memory.usage, stats.memory.limit, stats.memory.swap_usage) == (4096, None, None)
    assert stats.memory.stat == {"anon": 10, "file": 20} and stats.memory.events["oom_kill"] == 1
    assert (stats.cpu.usage_ns, stats.cpu.user_ns, stats.cpu.system_ns) == (7000, 5000, 0)
    assert (stats.pids.current, stats.pids.limit) == (3, 10)
    assert [(h.page_size, h.limit) for h in stats.hugetlb] == [("2MB", None)]
    assert Cgroup(str(tmp_path)).oom_kills() == 1


def test_oom_monitor_reports_each_new_kill(tmp_path: Path) -> None:
    events = tmp_path / "memory.events"
    events.write_text("oom 0\noom_kill 2\n")  # kills before watching are not news
    monitor = OomMonitor(interval=0.02)
    try:
        monitor.watch("c1", str(events))
        monitor.watch("c2", str(tmp_path / "missing"))  # no memory controller: ignored
        with pytest.raises(TimeoutError):
            monitor.next_event(timeout=0.1)
        events.write_text("oom 1\noom_kill 3\n")
        assert monitor.next_event(timeout=5) == "c1"
        monitor.unwatch("c1")
        events.write_text("oom 1\noom_kill 4\n")
        with pytest.raises(TimeoutError):
            monitor.next_event(timeout=0.1)
    finally:
        monitor.close()
    with pytest.raises(RuntimeClosedError):
        monitor.next_event()


def test_oom_monitor_close_wakes_a_waiter() -> None:
    monitor = OomMonitor()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            monitor.next_event()
        except RuntimeClosedError as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.05)
    monitor.close()
    waiter.join(5)
    assert len(errors) == 1


def test_exit_latch_wakes_every_waiter() -> None:
    assert (exit_status(-9), exit_status(3)) == (137, 3)
    latch = ExitLatch()
    results: list[int | None] = []
    waiters = [threading.Thread(target=lambda: results.append(latch.wait())) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    assert latch.wait(0.01) is None
    latch.on_exit(123, -15)
    for waiter in waiters:
        waiter.join(5)
    assert results == [143, 143, 143]
    latch.close()

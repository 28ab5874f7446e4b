"""QmpClient against a fake QMP server: commands, errors, events, fd passing, hotplug rollbacks."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kata.errors import HypervisorError
from kata.hypervisor.devices import BlockDevice, NetDevice
from kata.hypervisor.qemu.args import MemoryBackend
from kata.hypervisor.qemu.hotplug import DeviceManager, PortPool
from kata.hypervisor.qemu.qmp import QmpClient, QmpError, QmpEvent
from kata.hypervisor.qemu.resize import MemoryResizer, VcpuResizer
from tests.unit.fake_qmp import FakeQmpServer, QmpFailureError, Reply

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FakeQmpServer]:
    fake = FakeQmpServer(str(tmp_path / "qmp.sock")).start()
    yield fake
    fake.close()


async def connected(server: FakeQmpServer) -> QmpClient:
    client = QmpClient("test")
    await asyncio.wait_for(client.connect(server.path), 5)
    return client


def deleted_after(device: str) -> Reply:
    return {}, [("DEVICE_DELETED", {"path": f"/machine/peripheral/{device}/virtio-backend"}),
                ("DEVICE_DELETED", {"device": device, "path": f"/machine/peripheral/{device}"})]


def test_connect_retries_until_the_socket_appears(tmp_path: Path) -> None:
    path = tmp_path / "late.sock"

    async def scenario() -> list[str]:
        client = QmpClient()
        connecting = asyncio.create_task(client.connect(str(path)))
        await asyncio.sleep(0.2)
        fake = FakeQmpServer(str(path)).start()
        try:
            await asyncio.wait_for(connecting, 5)
            await client.execute("query-version")
            await client.close()
        finally:
            fake.close()
        return fake.names()

    assert run(scenario()) == ["qmp_capabilities", "query-version"]


def test_connect_gives_up_when_the_process_is_gone(tmp_path: Path) -> None:
    async def scenario() -> None:
        await QmpClient().connect(str(tmp_path / "never.sock"), alive=lambda: False)

    with pytest.raises(QmpError, match="exited before its monitor answered"):
        run(scenario())


def test_errors_carry_qemus_error_class(server: FakeQmpServer) -> None:
    def refuse(args: dict[str, Any]) -> Reply:
        raise QmpFailureError("DeviceNotFound", f"Device '{args['id']}' not found")

    server.handlers["device_del"] = refuse

    async def scenario() -> None:
        client = await connected(server)
        try:
            await client.device_del("nope", timeout=1)
        finally:
            await client.close()

    with pytest.raises(QmpError) as info:
        run(scenario())
    assert info.value.error_class == "DeviceNotFound"
    assert isinstance(info.value, HypervisorError)
    assert "Device 'nope' not found" in str(info.value)


def test_device_del_waits_for_its_own_device_deleted(server: FakeQmpServer) -> None:
    server.handlers["device_del"] = lambda args: deleted_after(str(args["id"]))

    async def scenario() -> None:
        client = await connected(server)
        await client.device_del("disk0", timeout=5)
        await client.close()

    run(scenario())
    assert server.commands[-1] == ("device_del", {"id": "disk0"})


def test_device_del_times_out_when_the_guest_keeps_the_device(server: FakeQmpServer) -> None:
    async def scenario() -> None:
        client = await connected(server)
        try:
            await client.device_del("disk0", timeout=0.2)
        finally:
            await client.close()

    with pytest.raises(QmpError, match=r"did not release it within 0\.2 s"):
        run(scenario())


def test_events_reach_callbacks_and_streams(server: FakeQmpServer) -> None:
    server.handlers["stop"] = lambda _: ({}, [("STOP", {})])
    server.handlers["cont"] = lambda _: ({}, [("RESUME", {})])

    async def scenario() -> tuple[list[str], QmpEvent]:
        client = await connected(server)
        seen: list[str] = []
        unsubscribe = client.on_event(lambda event: seen.append(event.name))
        with client.listen("RESUME") as resumes:
            await client.stop()
            await client.cont()
            resumed = await asyncio.wait_for(resumes.get(), 5)
        await asyncio.sleep(0.05)
        unsubscribe()
        await client.close()
        return seen, resumed

    seen, resumed = run(scenario())
    assert seen == ["STOP", "RESUME"]
    assert resumed.name == "RESUME" and resumed.timestamp > 0


def test_getfd_passes_the_descriptor(server: FakeQmpServer) -> None:
    read_end, write_end = os.pipe()

    async def scenario() -> None:
        client = await connected(server)
        await client.getfd("fd-net0-0", write_end)
        await client.close()

    try:
        run(scenario())
    finally:
        os.close(read_end)
        os.close(write_end)
    assert server.commands[-1] == ("getfd", {"fdname": "fd-net0-0"})
    assert len(server.fds) == 1


def test_status_and_cpu_queries_are_typed(server: FakeQmpServer) -> None:
    server.handlers["query-status"] = lambda _: ({"status": "paused", "running": False}, [])
    server.handlers["query-cpus-fast"] = lambda _: (
        [{"cpu-index": 0, "qom-path": "/machine/unattached/device[0]", "thread-id": 42,
          "props": {"socket-id": 0, "core-id": 0, "thread-id": 0}, "target": "x86_64"}], [])

    async def scenario() -> None:
        client = await connected(server)
        status = await client.query_status()
        cpus = await client.query_cpus_fast()
        await client.close()
        assert (status.status, status.running) == ("paused", False)
        assert cpus[0].thread_id == 42 and cpus[0].props["socket-id"] == 0

    run(scenario())


def test_a_failed_dimm_removes_its_memory_backend(server: FakeQmpServer) -> None:
    def refuse(_: dict[str, Any]) -> Reply:
        raise QmpFailureError("GenericError", "no free slot")

    server.handlers["device_add"] = refuse
    server.handlers["query-memory-size-summary"] = lambda _: ({"base-memory": 256 << 20}, [])

    async def scenario() -> None:
        client = await connected(server)
        resizer = MemoryResizer(client, MemoryBackend("memfd"), share=True, max_mib=1024, slots=4)
        try:
            await resizer.resize(300)
        finally:
            await client.close()

    with pytest.raises(QmpError, match="no free slot"):
        run(scenario())
    assert server.commands[1:] == [
        ("query-memory-size-summary", {}),
        ("object-add", {"qom-type": "memory-backend-memfd", "size": 128 << 20, "share": True,
                        "id": "mem-dimm1"}),
        ("device_add", {"driver": "pc-dimm", "id": "dimm1", "memdev": "mem-dimm1"}),
        ("object-del", {"id": "mem-dimm1"}),
    ]


def fake_memory(server: FakeQmpServer, plugged_mib: int = 0) -> None:
    """A 256 MiB guest with ``plugged_mib`` of memory devices; each device_add plugs a 128 MiB dimm."""
    plugged = [plugged_mib << 20]

    def summary(_: dict[str, Any]) -> Reply:
        return {"base-memory": 256 << 20, "plugged-memory": plugged[0]}, []

    def add(args: dict[str, Any]) -> Reply:
        plugged[0] += 128 << 20
        return {}, []

    server.handlers.update({"query-memory-size-summary": summary, "device_add": add})


def test_memory_grows_in_whole_blocks_and_never_shrinks(server: FakeQmpServer) -> None:
    fake_memory(server)

    async def scenario() -> int:
        client = await connected(server)
        resizer = MemoryResizer(client, MemoryBackend("memfd"), share=True, max_mib=1024, slots=4)
        try:
            grown = await resizer.resize(257)
            with pytest.raises(HypervisorError, match="cannot shrink"):
                await resizer.resize(256)
            with pytest.raises(HypervisorError, match="above the maximum"):
                await resizer.resize(2048)
            return grown
        finally:
            await client.close()

    assert run(scenario()) == 384


def test_a_pmem_rootfs_is_not_counted_as_guest_ram(server: FakeQmpServer) -> None:
    fake_memory(server, 20)  # the virtio-pmem rootfs image: a memory device QEMU counts as plugged

    async def scenario() -> int:
        client = await connected(server)
        resizer = MemoryResizer(client, MemoryBackend("memfd"), share=True, max_mib=1024 + 20, slots=4,
                                not_ram_mib=20)
        try:
            grown = await resizer.resize(300)
            with pytest.raises(HypervisorError, match="above the maximum 1024 MiB"):
                await resizer.resize(1025)
            return grown
        finally:
            await client.close()

    assert run(scenario()) == 384


def test_vcpus_go_into_free_slots_and_leave_last_first(server: FakeQmpServer) -> None:
    present = [{"cpu-index": 0, "qom-path": "/machine/cpu0", "thread-id": 1, "props": {}}]
    slots = [{"type": "max-x86_64-cpu", "vcpus-count": 1, "props": {"socket-id": i, "core-id": 0,
                                                                   "thread-id": 0}} for i in (1, 0)]
    slots[1]["qom-path"] = "/machine/cpu0"
    def plug(_: dict[str, Any]) -> Reply:
        present.append({**present[0], "cpu-index": 1})
        return {}, []

    def unplug(args: dict[str, Any]) -> Reply:
        present.pop()
        return deleted_after(str(args["id"]))

    server.handlers.update({
        "query-cpus-fast": lambda _: (list(present), []),
        "query-hotpluggable-cpus": lambda _: (slots, []),
        "device_add": plug,
        "device_del": unplug,
    })

    async def scenario() -> tuple[int, int]:
        client = await connected(server)
        resizer = VcpuResizer(client, boot_vcpus=1, max_vcpus=2)
        try:
            return await resizer.resize(2, timeout=5), await resizer.resize(1, timeout=5)
        finally:
            await client.close()

    assert run(scenario()) == (2, 1)
    added = next(args for name, args in server.commands if name == "device_add")
    assert added == {"driver": "max-x86_64-cpu", "id": "vcpu1", "socket-id": 1, "core-id": 0, "thread-id": 0}


def test_a_refused_disk_rolls_back_its_blockdev_and_port(server: FakeQmpServer) -> None:
    def refuse(_: dict[str, Any]) -> Reply:
        raise QmpFailureError("GenericError", "Bus 'rp0' does not support hotplugging")

    server.handlers["device_add"] = refuse

    async def scenario() -> str:
        client = await connected(server)
        ports = PortPool(1)
        manager = DeviceManager(client, "q35", ports, start_fs=_no_fs)
        try:
            with pytest.raises(QmpError):
                await manager.add(BlockDevice("/img/disk.raw", "disk0"))
            return ports.take()  # the port came back
        finally:
            await client.close()

    assert run(scenario()) == "rp0"
    assert server.names()[1:] == ["blockdev-add", "device_add", "blockdev-del"]
    assert server.commands[1][1] == {"driver": "raw", "node-name": "drive-disk0", "read-only": False,
                                     "file": {"driver": "file", "filename": "/img/disk.raw"}}


def test_disk_hotplug_and_unplug_in_order(server: FakeQmpServer) -> None:
    server.handlers["device_del"] = lambda args: deleted_after(str(args["id"]))

    async def scenario() -> None:
        client = await connected(server)
        manager = DeviceManager(client, "q35", PortPool(2), start_fs=_no_fs)
        disk = BlockDevice("/dev/mapper/x", "disk0", read_only=True)
        await manager.add(disk)
        assert "disk0" in manager
        await manager.remove(disk, timeout=5)
        with pytest.raises(HypervisorError, match="not a hotplugged device"):
            await manager.remove(disk, timeout=5)
        await client.close()

    run(scenario())
    assert server.names()[1:] == ["blockdev-add", "device_add", "device_del", "blockdev-del"]
    assert server.commands[1][1]["file"] == {"driver": "host_device", "filename": "/dev/mapper/x"}
    assert server.commands[2][1] == {"driver": "virtio-blk-pci", "id": "disk0", "drive": "drive-disk0",
                                     "bus": "rp0"}


def test_nic_hotplug_passes_tap_fds_by_name(server: FakeQmpServer) -> None:
    read_end, write_end = os.pipe()

    async def scenario() -> None:
        client = await connected(server)
        manager = DeviceManager(client, "q35", PortPool(1), start_fs=_no_fs)
        await manager.add(NetDevice("eth0", "02:00:00:00:00:01", tap_fds=(write_end,), mtu=1400))
        await client.close()

    try:
        run(scenario())
    finally:
        os.close(read_end)
        os.close(write_end)
    assert server.commands[1:] == [
        ("getfd", {"fdname": "fd-eth0-0"}),
        ("netdev_add", {"type": "tap", "id": "net-eth0", "fd": "fd-eth0-0"}),
        ("device_add", {"driver": "virtio-net-pci", "id": "eth0", "netdev": "net-eth0",
                        "mac": "02:00:00:00:00:01", "host_mtu": 1400, "bus": "rp0"}),
    ]


def test_microvm_refuses_pci_hotplug_before_asking_qemu(server: FakeQmpServer) -> None:
    async def scenario() -> None:
        client = await connected(server)
        manager = DeviceManager(client, "microvm", PortPool(0), start_fs=_no_fs)
        try:
            await manager.add(BlockDevice("/img/d", "disk0"))
        finally:
            await client.close()

    with pytest.raises(HypervisorError, match="microvm has no PCI hotplug"):
        run(scenario())
    assert server.names() == ["qmp_capabilities"]


async def _no_fs(_: object) -> Any:
    raise AssertionError("no virtiofsd expected")

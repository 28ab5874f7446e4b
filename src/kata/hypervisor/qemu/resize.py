"""vCPU and memory hotplug on a running q35 QEMU (vCPU device_add, memory backend + pc-dimm)."""

from __future__ import annotations

from kata.errors import HypervisorError
from kata.hypervisor.qemu.args import MemoryBackend
from kata.hypervisor.qemu.qmp import QmpClient

__all__ = ["MEMORY_BLOCK_MIB", "MemoryResizer", "VcpuResizer", "dimm_backend"]

# x86-64 Linux onlines hotplugged memory in 128 MiB blocks (memory_block_size_bytes below 64 GiB).
MEMORY_BLOCK_MIB = 128


class VcpuResizer:
    """Adds vCPUs into free slots and removes the ones it added, last first."""

    def __init__(self, qmp: QmpClient, boot_vcpus: int, max_vcpus: int, *, unplug: bool = True) -> None:
        self._qmp = qmp
        self._boot = boot_vcpus
        self._max = max_vcpus
        self._unplug = unplug
        self._added: list[str] = []
        self._serial = 0

    async def resize(self, count: int, timeout: float) -> int:
        """Hot(un)plug towards ``count`` vCPUs; the count present afterwards.

        Raises:
            HypervisorError: ``count`` outside boot..max, unplug asked where it is disabled, or
                QEMU/the guest refused.
        """
        if not self._boot <= count <= self._max:
            raise HypervisorError(f"resize vcpus: {count} is outside {self._boot}..{self._max}")
        present = len(await self._qmp.query_cpus_fast())
        if count < present and not self._unplug:
            # QEMU 7.2 aborts (qemu_thread_join: Resource deadlock avoided) when a vCPU is removed
            # under single-threaded TCG: refuse instead of losing the VM.
            raise HypervisorError("resize vcpus: no vCPU hot-unplug under single-threaded TCG "
                                  "(tcg_tb_size = 0 selects multi-threaded TCG)")
        if count > present:
            free = [s for s in await self._qmp.query_hotpluggable_cpus() if s.qom_path is None]
            free.sort(key=lambda s: sorted(s.props.items()))
            for slot in free[: count - present]:
                self._serial += 1
                device_id = f"vcpu{self._serial}"
                await self._qmp.hotplug_vcpu(slot, device_id)
                self._added.append(device_id)
        while count < present and self._added:
            await self._qmp.device_del(self._added[-1], timeout=timeout)
            self._added.pop()
            present -= 1
        return len(await self._qmp.query_cpus_fast())


def dimm_backend(backend: MemoryBackend, size_mib: int, share: bool) -> dict[str, object]:
    """``object-add`` properties of the RAM behind one hotplugged dimm (same kind as boot RAM)."""
    props: dict[str, object] = {"qom-type": f"memory-backend-{backend.kind}", "size": size_mib << 20}
    if backend.kind == "file":
        props["mem-path"] = backend.path
    if backend.kind != "ram":
        props["share"] = share
    return props


class MemoryResizer:
    """Grows guest RAM by pc-dimms, rounded up to whole memory blocks."""

    def __init__(self, qmp: QmpClient, backend: MemoryBackend, *, share: bool, max_mib: int,
                 slots: int, not_ram_mib: int = 0) -> None:
        """``not_ram_mib``: memory devices that are not guest RAM (virtio-pmem images), which QEMU
        counts in plugged memory and which take their part of ``max_mib``."""
        self._qmp = qmp
        self._backend = backend
        self._share = share
        self._not_ram = not_ram_mib
        self._max = max_mib - not_ram_mib
        self._slots = slots
        self._dimms = 0

    async def _present(self) -> int:
        return await self._qmp.query_memory_mib() - self._not_ram

    async def resize(self, mib: int) -> int:
        """Make at least ``mib`` MiB present; the MiB present afterwards.

        Raises:
            HypervisorError: shrinking asked (pc-dimms are not unplugged), no slot left, above the
                maximum, or QEMU refused.
        """
        present = await self._present()
        if mib < present:
            raise HypervisorError(f"resize memory: cannot shrink from {present} to {mib} MiB")
        if mib == present:
            return present
        delta = -(-(mib - present) // MEMORY_BLOCK_MIB) * MEMORY_BLOCK_MIB
        if present + delta > self._max:
            raise HypervisorError(f"resize memory: {present + delta} MiB is above the maximum "
                                  f"{self._max} MiB")
        if self._dimms >= self._slots:
            raise HypervisorError(f"resize memory: all {self._slots} memory slots are used")
        self._dimms += 1
        try:
            backend = dimm_backend(self._backend, delta, self._share)
            await self._qmp.hotplug_memory(f"dimm{self._dimms}", backend)
        except HypervisorError:
            self._dimms -= 1
            raise
        return await self._present()

"""From configuration and host facts to the VmSpec the argv builder renders."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kata.config.schema import HypervisorConfig
from kata.errors import HypervisorError
from kata.hypervisor.accel import KVM_CPU, TCG_CPU
from kata.hypervisor.base import VmPaths
from kata.hypervisor.devices import BlockDevice, Device, RootfsImage
from kata.hypervisor.qemu.args import MemoryBackend, VmSpec
from kata.hypervisor.qemu.qdev import Machine

__all__ = ["HOTPLUG_PORTS", "HostResources", "host_resources", "rootfs_image", "vm_spec"]

# Empty pcie-root-ports created on q35 for hotplug (block, net, fs); each costs little at boot.
HOTPLUG_PORTS = 4


@dataclass(frozen=True)
class HostResources:
    """What the host offers a VM: CPUs, RAM (MiB) and the TSC frequency (kHz, 0 if unknown)."""

    cpus: int
    memory_mib: int
    tsc_khz: int


def _tsc_khz(cpuinfo: str) -> int:
    # Under TCG the guest TSC ticks at the host's rate; "cpu MHz" is that rate on this kind of host.
    for line in cpuinfo.splitlines():
        if line.startswith("cpu MHz"):
            return int(float(line.partition(":")[2]) * 1000)
    return 0


def host_resources() -> HostResources:
    """Read the host's CPU count, RAM and TSC frequency from /proc."""
    memory_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = int(line.split()[1])
    try:
        tsc = _tsc_khz(Path("/proc/cpuinfo").read_text())
    except (OSError, ValueError):
        tsc = 0
    return HostResources(os.cpu_count() or 1, memory_kib // 1024, tsc)


def rootfs_image(config: HypervisorConfig) -> RootfsImage | None:
    """The configured rootfs ``image``: virtio-pmem (DAX) on q35, virtio-blk on microvm; None if unset.

    Raises:
        HypervisorError: the image file cannot be read.
    """
    if not config.image:
        return None
    try:
        size = os.stat(config.image).st_size
    except OSError as exc:
        hint = " (kata-runtime image build --rootfs-image erofs makes it)" if exc.errno == errno.ENOENT else ""
        raise HypervisorError(f"rootfs image {config.image}: {exc.strerror}{hint}") from exc
    # DAX needs virtio-pmem, which is PCI-only: microvm falls back to a read-only disk.
    kind: Literal["virtio-pmem", "virtio-blk"] = "virtio-blk"
    if config.machine_type == "q35":
        kind = "virtio-pmem"
    return RootfsImage(config.image, kind=kind, size=size)


def _memory_backend(config: HypervisorConfig) -> MemoryBackend:
    if config.file_mem_backend:
        return MemoryBackend("file", config.file_mem_backend)
    return MemoryBackend("memfd")


def vm_spec(config: HypervisorConfig, *, paths: VmPaths, accelerator: Literal["kvm", "tcg"],
            devices: tuple[Device, ...], host: HostResources, name: str) -> VmSpec:
    """The VmSpec of a VM: config values, bounded by the host, on the given devices.

    Raises:
        HypervisorError: an unknown machine type.
    """
    if config.machine_type not in ("q35", "microvm"):
        raise HypervisorError(f"qemu: unsupported machine_type {config.machine_type!r}")
    machine: Machine = "q35" if config.machine_type == "q35" else "microvm"
    hotplug = machine == "q35"
    # As Kata: 0 or more than the host has means "as many as the host has".
    max_vcpus = min(config.default_maxvcpus or host.cpus, host.cpus)
    max_memory = min(config.default_maxmemory or host.memory_mib, host.memory_mib)
    return VmSpec(
        qemu=config.path, name=name, machine=machine, accelerator=accelerator,
        cpu=KVM_CPU if accelerator == "kvm" else TCG_CPU, kernel=config.kernel,
        qmp_socket=str(paths.qmp_socket), initrd=config.initrd, kernel_params=config.kernel_params,
        vcpus=config.default_vcpus, max_vcpus=max(max_vcpus, config.default_vcpus) if hotplug else 0,
        memory_mib=config.default_memory,
        max_memory_mib=max(max_memory, config.default_memory) if hotplug else 0,
        memory_slots=config.memory_slots if hotplug else 0, memory_backend=_memory_backend(config),
        tcg_tb_size=config.tcg_tb_size if accelerator == "tcg" else 0,
        tsc_khz=host.tsc_khz if machine == "microvm" else 0,
        hotplug_ports=HOTPLUG_PORTS if hotplug else 0,
        scsi_controller=config.block_device_driver == "virtio-scsi" or any(
            isinstance(d, BlockDevice) and d.driver == "virtio-scsi" for d in devices),
        debug=config.enable_debug, devices=devices, free_page_reporting=config.reclaim_guest_freed_memory)

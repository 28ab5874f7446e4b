"""Pure QEMU argv builder: a VmSpec in, the command line out (no I/O; golden-tested)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kata.errors import HypervisorError
from kata.hypervisor.devices import (
    AgentChannel,
    BlockDevice,
    Console,
    Device,
    NetDevice,
    RootfsImage,
    SharedFs,
)
from kata.hypervisor.qemu.qdev import (
    SCSI_CONTROLLER_ID,
    SERIAL_CONTROLLER_ID,
    Machine,
    agent_device_props,
    block_device_props,
    blockdev_props,
    chardev_id,
    fs_device_props,
    keyval,
    net_device_props,
    pmem_backend_props,
    pmem_device_props,
    virtio_driver,
)

__all__ = [
    "BALLOON_ID",
    "BASE_KERNEL_PARAMS",
    "MEMORY_BACKEND_ID",
    "MemoryBackend",
    "VmSpec",
    "balloon_options",
    "build_argv",
    "device_options",
    "kernel_command_line",
    "root_port_id",
    "single_threaded_tcg",
    "uses_vhost_user",
    "validate_spec",
]

# Measured on the Debian cloud kernel under TCG (docs/hypervisor.md): quiet console, no crypto
# self-tests (0.23 s), no i8042/PS2 probing, no mitigations, one UART; panic=-1 with -no-reboot
# makes a guest panic end the QEMU process instead of hanging.
BASE_KERNEL_PARAMS = ("console=ttyS0 panic=-1 quiet cryptomgr.notests i8042.noaux i8042.nopnp "
                      "mitigations=off no_timer_check audit=0 apparmor=0 random.trust_cpu=on 8250.nr_uarts=1 "
                      "swiotlb=noforce")
MEMORY_BACKEND_ID = "mem"
BALLOON_ID = "balloon0"

Option = tuple[str, str]


@dataclass(frozen=True)
class MemoryBackend:
    """Guest RAM: ``memfd`` (default: shareable, no THP bloat), ``file`` at ``path``, or anonymous ``ram``.

    ``share`` forces MAP_SHARED on a file backend; vhost-user devices force it anyway.
    """

    kind: Literal["memfd", "file", "ram"] = "memfd"
    path: str = ""
    share: bool = False


@dataclass(frozen=True)
class VmSpec:
    """Everything the QEMU command line is made of; the driver fills it from config and host facts."""

    qemu: str
    name: str
    machine: Machine
    accelerator: Literal["kvm", "tcg"]
    cpu: str
    kernel: str
    qmp_socket: str
    initrd: str = ""
    kernel_params: str = ""
    vcpus: int = 1
    max_vcpus: int = 0  # 0: no vCPU hotplug
    memory_mib: int = 256
    max_memory_mib: int = 0  # 0: no memory hotplug (q35 only)
    memory_slots: int = 0
    memory_backend: MemoryBackend = MemoryBackend()
    tcg_tb_size: int = 0  # MiB of TCG translation cache; 0: QEMU's default
    tsc_khz: int = 0  # host TSC frequency, for microvm's tsc_early_khz
    hotplug_ports: int = 0  # q35: pcie-root-ports rp0..rpN-1 created empty for hotplug
    scsi_controller: bool = False
    debug: bool = False
    devices: tuple[Device, ...] = ()
    incoming: bool = False  # start with -incoming defer: the guest comes from saved state, not a boot
    free_page_reporting: bool = False  # virtio-balloon reporting freed guest pages (see balloon_options)


def root_port_id(index: int) -> str:
    """Id of the ``index``-th hotplug pcie-root-port."""
    return f"rp{index}"


def uses_vhost_user(devices: tuple[Device, ...]) -> bool:
    """Whether a device is served by a vhost-user backend (virtio-fs): RAM must then be shared."""
    return any(isinstance(d, SharedFs) and d.kind == "virtio-fs" for d in devices)


def kernel_command_line(spec: VmSpec) -> str:
    """The guest kernel command line: measured base, machine extras, then the configured params."""
    params = BASE_KERNEL_PARAMS.split()
    if spec.debug:
        params.remove("quiet")
    if spec.machine == "microvm" and spec.tsc_khz:
        # microvm: calibrating the TSC against the PIT hangs about one boot in two under TCG.
        params.append(f"tsc_early_khz={spec.tsc_khz}")
    if spec.machine == "q35" and spec.max_memory_mib > spec.memory_mib:
        # Hotplugged pc-dimms come up offline otherwise, and nothing in the guest onlines them.
        params.append("memhp_default_state=online")
    params.extend(spec.kernel_params.split())
    return " ".join(params)


def validate_spec(spec: VmSpec) -> None:
    """Reject what the machine type cannot do.

    Raises:
        HypervisorError: naming the problem.
    """
    problems: list[str] = []
    if spec.vcpus < 1 or (spec.max_vcpus and spec.max_vcpus < spec.vcpus):
        problems.append(f"vcpus {spec.vcpus} / max {spec.max_vcpus}")
    if spec.max_memory_mib and spec.max_memory_mib < spec.memory_mib:
        problems.append(f"max memory {spec.max_memory_mib} MiB below memory {spec.memory_mib} MiB")
    if uses_vhost_user(spec.devices) and spec.memory_backend.kind == "ram":
        problems.append("virtio-fs (vhost-user) needs a memfd or file memory backend")
    if uses_vhost_user(spec.devices) and spec.incoming:
        problems.append("virtio-fs (vhost-user-fs) cannot be migrated: hotplug it after the restore")
    if spec.memory_backend.kind == "file" and not spec.memory_backend.path:
        problems.append("file memory backend without a path")
    if spec.machine == "microvm":
        problems.extend(_microvm_problems(spec))
    if sum(isinstance(d, Console) for d in spec.devices) > 1:
        problems.append("more than one console")
    if problems:
        raise HypervisorError(f"qemu {spec.machine}: " + "; ".join(problems))


def _microvm_problems(spec: VmSpec) -> list[str]:
    problems: list[str] = []
    if spec.max_memory_mib > spec.memory_mib or spec.hotplug_ports:
        problems.append("microvm has no memory or PCI hotplug")
    for device in spec.devices:
        if isinstance(device, RootfsImage) and device.kind == "virtio-pmem":
            problems.append(f"virtio-pmem ({device.path}) needs PCI (use q35 or virtio-blk)")
    return problems


def _machine_options(spec: VmSpec) -> list[str]:
    options = ["-machine", f"{spec.machine},memory-backend={MEMORY_BACKEND_ID}"]
    if spec.accelerator == "tcg" and spec.tcg_tb_size:
        # The TCG code cache defaults to ~44 MiB resident per VM; 16 MiB costs no visible boot time.
        # But with a bounded cache, multi-threaded TCG gives each vCPU thread its own cache regions
        # and QEMU 7.2 aborts (tcg_region_initial_alloc__locked) when a hotplugged vCPU finds none
        # free; single-threaded TCG shares one region, and boots no slower here.
        threads = "thread=single," if single_threaded_tcg(spec) else ""
        options += ["-accel", f"tcg,{threads}tb-size={spec.tcg_tb_size}"]
    else:
        options += ["-accel", spec.accelerator]
    options += ["-cpu", spec.cpu, "-smp", _smp(spec), "-m", _memory(spec)]
    return options


def single_threaded_tcg(spec: VmSpec) -> bool:
    """Whether ``spec`` runs single-threaded TCG (see :func:`_machine_options` for why)."""
    return spec.accelerator == "tcg" and spec.tcg_tb_size > 0 and spec.max_vcpus > spec.vcpus


def _smp(spec: VmSpec) -> str:
    if spec.machine == "q35" and spec.max_vcpus > spec.vcpus:
        return f"{spec.vcpus},maxcpus={spec.max_vcpus}"
    return str(spec.vcpus)


def _memory(spec: VmSpec) -> str:
    if spec.machine == "q35" and spec.max_memory_mib > spec.memory_mib:
        return f"{spec.memory_mib}M,slots={spec.memory_slots},maxmem={spec.max_memory_mib}M"
    return f"{spec.memory_mib}M"


def _memory_backend(spec: VmSpec) -> list[str]:
    backend = spec.memory_backend
    props: dict[str, object] = {"id": MEMORY_BACKEND_ID, "size": f"{spec.memory_mib}M"}
    if backend.kind == "memfd":
        # memfd RAM is shared by default: vhost-user can map it and it avoids THP bloat.
        props["share"] = True
    elif backend.kind == "file":
        props["mem-path"] = backend.path
        props["share"] = backend.share or uses_vhost_user(spec.devices)
    return ["-object", keyval({"qom-type": f"memory-backend-{backend.kind}", **props}, head="qom-type")]


def _boot_options(spec: VmSpec) -> list[str]:
    options = ["-kernel", spec.kernel]
    if spec.initrd:
        options += ["-initrd", spec.initrd]
    return [*options, "-append", kernel_command_line(spec)]


def _base_options(spec: VmSpec) -> list[str]:
    options = ["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
               "-chardev", keyval({"backend": "socket", "id": "qmp", "path": spec.qmp_socket,
                                   "server": True, "wait": False}, head="backend"),
               "-mon", "chardev=qmp,mode=control"]
    if spec.machine == "microvm" and uses_vhost_user(spec.devices):
        # virtiofsd refuses legacy virtio devices, and microvm's virtio-mmio defaults to legacy.
        options += ["-global", "virtio-mmio.force-legacy=false"]
    return options


def _controllers(spec: VmSpec) -> list[str]:
    options: list[str] = []
    if spec.machine == "q35":
        for index in range(spec.hotplug_ports):
            port = {"driver": "pcie-root-port", "id": root_port_id(index), "bus": "pcie.0",
                    "chassis": index + 1}
            options += ["-device", keyval(port, head="driver")]
    if any(isinstance(d, AgentChannel) and d.transport == "serial" for d in spec.devices):
        serial = {"driver": virtio_driver("virtio-serial", spec.machine), "id": SERIAL_CONTROLLER_ID}
        options += ["-device", keyval(serial, head="driver")]
    if spec.scsi_controller:
        scsi = {"driver": virtio_driver("virtio-scsi", spec.machine), "id": SCSI_CONTROLLER_ID}
        options += ["-device", keyval(scsi, head="driver")]
    return options


def _socket_chardev(device_id: str, path: str, *, server: bool) -> Option:
    props: dict[str, object] = {"backend": "socket", "id": chardev_id(device_id), "path": path}
    if server:
        props.update(server=True, wait=False)
    return ("-chardev", keyval(props, head="backend"))


def _device(props: dict[str, object]) -> Option:
    return ("-device", keyval(props, head="driver"))


def _disk_options(device: BlockDevice | RootfsImage, machine: Machine) -> list[Option]:
    if isinstance(device, RootfsImage) and device.kind == "virtio-pmem":
        return [("-object", keyval(pmem_backend_props(device), head="qom-type")),
                _device(pmem_device_props(device))]
    return [("-blockdev", keyval(blockdev_props(device.path, device.id, device.read_only))),
            _device(block_device_props(device, machine))]


def _fs_options(fs: SharedFs, machine: Machine) -> list[Option]:
    if fs.kind == "virtio-fs":
        return [_socket_chardev(fs.id, fs.socket_path, server=False), _device(fs_device_props(fs, machine))]
    fsdev = {"driver": "local", "id": f"fsdev-{fs.id}", "path": fs.source, "security_model": "none",
             "multidevs": "remap"}
    return [("-fsdev", keyval(fsdev, head="driver")), _device(fs_device_props(fs, machine))]


def _net_options(net: NetDevice, machine: Machine) -> list[Option]:
    netdev: dict[str, object] = {"type": "tap", "id": f"net-{net.id}"}
    if net.tap_fds:
        netdev["fds" if len(net.tap_fds) > 1 else "fd"] = ":".join(str(fd) for fd in net.tap_fds)
    else:
        netdev.update(ifname=net.tap_name, script="no", downscript="no",
                      queues=net.queues if net.queues > 1 else None)
    return [("-netdev", keyval(netdev, head="type")), _device(net_device_props(net, machine))]


def device_options(device: Device, machine: Machine) -> list[Option]:
    """The (flag, value) pairs that cold-plug one device."""
    if isinstance(device, Console):
        return [("-chardev", keyval({"backend": "file", "id": device.id, "path": device.log_path},
                                    head="backend")),
                ("-serial", f"chardev:{device.id}")]
    if isinstance(device, AgentChannel):
        if device.transport == "vsock":
            return [_device(agent_device_props(device, machine))]
        return [_socket_chardev(device.id, device.socket_path, server=True),
                _device(agent_device_props(device, machine))]
    if isinstance(device, SharedFs):
        return _fs_options(device, machine)
    if isinstance(device, NetDevice):
        return _net_options(device, machine)
    return _disk_options(device, machine)


def balloon_options(spec: VmSpec) -> list[str]:
    """A virtio-balloon with free page reporting, when ``spec`` asks for it and its RAM may be discarded.

    The guest reports free 2 MiB blocks (what the initrd unpack and the boot freed) and QEMU discards
    them, so the host keeps only what the guest uses. Never on file-backed RAM: QEMU 7.2 discards
    there with fallocate(PUNCH_HOLE) even on a share=off (MAP_PRIVATE) mapping, which would punch
    holes into a template's RAM file under its clones; templates and clones therefore get no balloon
    at all (their machines must match, and the clone identity is computed with a file backend).
    """
    if not spec.free_page_reporting or spec.memory_backend.kind == "file":
        return []
    props = {"driver": virtio_driver("virtio-balloon", spec.machine), "id": BALLOON_ID,
             "free-page-reporting": True}
    return ["-device", keyval(props, head="driver")]


def build_argv(spec: VmSpec) -> list[str]:
    """The complete QEMU command line for ``spec``.

    Raises:
        HypervisorError: the spec asks for something its machine type cannot do.
    """
    validate_spec(spec)
    argv = [spec.qemu, "-name", spec.name.replace(",", ",,"), *_machine_options(spec),
            *_memory_backend(spec), *_boot_options(spec), *_base_options(spec), *_controllers(spec)]
    for device in spec.devices:
        for flag, value in device_options(device, spec.machine):
            argv += [flag, value]
    # Last, so that it takes no PCI slot another device had before it existed.
    argv += balloon_options(spec)
    if spec.incoming:
        # The state is fed over QMP (migrate-incoming) once x-ignore-shared is set: QEMU 7.2 has no
        # command-line switch for that capability, so the URI cannot be given here.
        argv += ["-incoming", "defer"]
    return argv

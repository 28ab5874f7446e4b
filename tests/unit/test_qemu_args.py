"""Golden tests of the pure QEMU argv builder (q35 and microvm) and of the VmSpec made from config."""

from __future__ import annotations

from pathlib import Path

import pytest

from kata.config.schema import HypervisorConfig
from kata.errors import HypervisorError
from kata.hypervisor.base import VmPaths, shared_fs_for, with_standard_devices
from kata.hypervisor.devices import (
    AgentChannel,
    BlockDevice,
    Console,
    NetDevice,
    RootfsImage,
    SharedFs,
)
from kata.hypervisor.qemu.args import MemoryBackend, VmSpec, build_argv, device_options, kernel_command_line
from kata.hypervisor.qemu.qdev import keyval
from kata.hypervisor.qemu.spec import HostResources, _tsc_khz, rootfs_image, vm_spec
from kata.image.bootinitrd import ROOTFS_SERIAL

CMDLINE = ("console=ttyS0 panic=-1 quiet cryptomgr.notests i8042.noaux i8042.nopnp mitigations=off "
           "no_timer_check audit=0 apparmor=0 random.trust_cpu=on 8250.nr_uarts=1 swiotlb=noforce")
W = "/run/kata/sb1"
STANDARD = (Console(f"{W}/console.log"), AgentChannel(f"{W}/agent.sock"))
SHARED = SharedFs("kataShared", f"{W}/shared", socket_path=f"{W}/virtiofsd.sock")


def spec(**changes: object) -> VmSpec:
    base: dict[str, object] = {
        "qemu": "/usr/bin/qemu-system-x86_64", "name": "sandbox-sb1", "machine": "q35", "accelerator": "tcg",
        "cpu": "max", "kernel": "/k/vmlinux", "initrd": "/k/initrd.img", "qmp_socket": f"{W}/qmp.sock",
        "kernel_params": "agent.log=debug", "vcpus": 1, "max_vcpus": 2, "memory_mib": 256,
        "max_memory_mib": 2048, "memory_slots": 10, "tcg_tb_size": 16, "hotplug_ports": 2,
        "devices": (*STANDARD, SHARED),
    }
    base.update(changes)
    return VmSpec(**base)  # type: ignore[arg-type]


def test_q35_golden() -> None:
    volume = BlockDevice("/img/vol.raw", "vol0", read_only=True)
    assert build_argv(spec(devices=(*STANDARD, SHARED, volume))) == [
        "/usr/bin/qemu-system-x86_64", "-name", "sandbox-sb1",
        "-machine", "q35,memory-backend=mem", "-accel", "tcg,thread=single,tb-size=16", "-cpu", "max",
        "-smp", "1,maxcpus=2", "-m", "256M,slots=10,maxmem=2048M",
        "-object", "memory-backend-memfd,id=mem,size=256M,share=on",
        "-kernel", "/k/vmlinux", "-initrd", "/k/initrd.img",
        "-append", f"{CMDLINE} memhp_default_state=online agent.log=debug",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-chardev", f"socket,id=qmp,path={W}/qmp.sock,server=on,wait=off", "-mon", "chardev=qmp,mode=control",
        "-device", "pcie-root-port,id=rp0,bus=pcie.0,chassis=1",
        "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=2",
        "-device", "virtio-serial-pci,id=serial0",
        "-chardev", f"file,id=console,path={W}/console.log", "-serial", "chardev:console",
        "-chardev", f"socket,id=char-agent,path={W}/agent.sock,server=on,wait=off",
        "-device", "virtserialport,id=agent,bus=serial0.0,chardev=char-agent,name=agent.channel.0",
        "-chardev", f"socket,id=char-fs0,path={W}/virtiofsd.sock",
        "-device", "vhost-user-fs-pci,id=fs0,chardev=char-fs0,tag=kataShared",
        "-blockdev",
        "driver=raw,node-name=drive-vol0,read-only=on,file.driver=file,file.filename=/img/vol.raw",
        "-device", "virtio-blk-pci,id=vol0,drive=drive-vol0",
    ]


def test_microvm_golden() -> None:
    microvm = spec(machine="microvm", max_vcpus=0, max_memory_mib=0, memory_slots=0, hotplug_ports=0,
                   tsc_khz=2596146, kernel_params="")
    assert build_argv(microvm) == [
        "/usr/bin/qemu-system-x86_64", "-name", "sandbox-sb1",
        "-machine", "microvm,memory-backend=mem", "-accel", "tcg,tb-size=16", "-cpu", "max",
        "-smp", "1", "-m", "256M",
        "-object", "memory-backend-memfd,id=mem,size=256M,share=on",
        "-kernel", "/k/vmlinux", "-initrd", "/k/initrd.img", "-append", f"{CMDLINE} tsc_early_khz=2596146",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-chardev", f"socket,id=qmp,path={W}/qmp.sock,server=on,wait=off", "-mon", "chardev=qmp,mode=control",
        "-global", "virtio-mmio.force-legacy=false",
        "-device", "virtio-serial-device,id=serial0",
        "-chardev", f"file,id=console,path={W}/console.log", "-serial", "chardev:console",
        "-chardev", f"socket,id=char-agent,path={W}/agent.sock,server=on,wait=off",
        "-device", "virtserialport,id=agent,bus=serial0.0,chardev=char-agent,name=agent.channel.0",
        "-chardev", f"socket,id=char-fs0,path={W}/virtiofsd.sock",
        "-device", "vhost-user-fs-device,id=fs0,chardev=char-fs0,tag=kataShared",
    ]


def test_microvm_without_vhost_user_keeps_legacy_virtio_mmio() -> None:
    argv = build_argv(spec(machine="microvm", max_vcpus=0, max_memory_mib=0, hotplug_ports=0,
                           devices=STANDARD))
    assert "-global" not in argv


def test_tcg_threads_follow_vcpu_hotplug() -> None:
    # Bounded TCG cache + vCPU hotplug: single-threaded (QEMU 7.2 aborts otherwise).
    assert "tcg,tb-size=16" in build_argv(spec(max_vcpus=1))
    assert "tcg" in build_argv(spec(tcg_tb_size=0))
    assert "memhp_default_state=online" not in kernel_command_line(spec(max_memory_mib=0))


def test_kvm_has_no_tb_size_and_debug_keeps_kernel_messages() -> None:
    argv = build_argv(spec(accelerator="kvm", cpu="host,pmu=off", debug=True))
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-cpu") + 1] == "host,pmu=off"
    assert "quiet" not in argv[argv.index("-append") + 1].split()


def test_file_and_anonymous_memory_backends() -> None:
    argv = build_argv(spec(memory_backend=MemoryBackend("file", "/dev/shm")))
    backend = argv[argv.index("-object") + 1]
    assert backend == "memory-backend-file,id=mem,size=256M,mem-path=/dev/shm,share=on"
    argv = build_argv(spec(memory_backend=MemoryBackend("file", "/dev/shm"), devices=STANDARD))
    assert argv[argv.index("-object") + 1].endswith("share=off")
    argv = build_argv(spec(memory_backend=MemoryBackend("ram"), devices=STANDARD))
    assert argv[argv.index("-object") + 1] == "memory-backend-ram,id=mem,size=256M"


def test_free_page_reporting_balloon_comes_last_and_never_on_file_ram() -> None:
    assert not any("balloon" in arg for arg in build_argv(spec()))
    argv = build_argv(spec(free_page_reporting=True))
    assert argv[-2:] == ["-device", "virtio-balloon-pci,id=balloon0,free-page-reporting=on"]
    assert build_argv(spec(free_page_reporting=True, machine="microvm", max_vcpus=0, max_memory_mib=0,
                           hotplug_ports=0))[-1] == "virtio-balloon-device,id=balloon0,free-page-reporting=on"
    ram = build_argv(spec(free_page_reporting=True, memory_backend=MemoryBackend("ram"), devices=STANDARD))
    assert ram[-1] == "virtio-balloon-pci,id=balloon0,free-page-reporting=on"
    # QEMU 7.2 discards file RAM with fallocate(PUNCH_HOLE) even when mapped share=off: a clone would
    # punch holes into its template's RAM file. Templates and clones (file RAM) get no balloon at all.
    for backend in (MemoryBackend("file", "/dev/shm/tpl", share=True), MemoryBackend("file", "/dev/shm/tpl")):
        argv = build_argv(spec(free_page_reporting=True, memory_backend=backend, devices=STANDARD))
        assert not any("balloon" in arg for arg in argv)


@pytest.mark.parametrize(("changes", "message"), [
    ({"memory_backend": MemoryBackend("ram")}, "virtio-fs .vhost-user. needs a memfd or file"),
    ({"machine": "microvm", "hotplug_ports": 0}, "microvm has no memory or PCI hotplug"),
    ({"machine": "microvm", "max_memory_mib": 0, "hotplug_ports": 0,
      "devices": (RootfsImage("/img/rootfs.img", size=1 << 20),)}, "virtio-pmem .* needs PCI"),
    ({"vcpus": 4, "max_vcpus": 2}, "vcpus 4 / max 2"),
    ({"devices": (*STANDARD, Console("/x"))}, "more than one console"),
])
def test_impossible_specs_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(HypervisorError, match=message):
        build_argv(spec(**changes))


def test_device_variants() -> None:
    assert device_options(RootfsImage("/img/rootfs.img", size=64 << 20), "q35") == [
        ("-object", f"memory-backend-file,id=mem-rootfs,mem-path=/img/rootfs.img,size={64 << 20},"
                    "share=off,readonly=on"),
        ("-device", "virtio-pmem-pci,id=rootfs,memdev=mem-rootfs")]
    # On microvm the image is a read-only disk; the boot initrd finds it by its serial.
    assert device_options(RootfsImage("/img/rootfs.img", kind="virtio-blk"), "microvm") == [
        ("-blockdev", "driver=raw,node-name=drive-rootfs,read-only=on,file.driver=file,"
                      "file.filename=/img/rootfs.img"),
        ("-device", f"virtio-blk-device,id=rootfs,drive=drive-rootfs,serial={ROOTFS_SERIAL}")]
    assert device_options(BlockDevice("/dev/loop3", "d1", driver="virtio-scsi"), "microvm") == [
        ("-blockdev",
         "driver=raw,node-name=drive-d1,read-only=off,file.driver=host_device,file.filename=/dev/loop3"),
        ("-device", "scsi-hd,id=d1,bus=scsi0.0,drive=drive-d1")]
    nic = NetDevice("eth0", "02:00:00:00:00:01", tap_fds=(7, 8), queues=2, mtu=1400)
    assert device_options(nic, "q35") == [
        ("-netdev", "tap,id=net-eth0,fds=7:8"),
        ("-device",
         "virtio-net-pci,id=eth0,netdev=net-eth0,mac=02:00:00:00:00:01,host_mtu=1400,mq=on,vectors=6")]
    assert device_options(NetDevice("eth1", "02:00:00:00:00:02", tap_name="tap0"), "microvm") == [
        ("-netdev", "tap,id=net-eth1,ifname=tap0,script=no,downscript=no"),
        ("-device", "virtio-net-device,id=eth1,netdev=net-eth1,mac=02:00:00:00:00:02")]
    assert device_options(SharedFs("kataShared", "/a,b", "virtio-9p"), "q35") == [
        ("-fsdev", "local,id=fsdev-fs0,path=/a,,b,security_model=none,multidevs=remap"),
        ("-device", "virtio-9p-pci,id=fs0,fsdev=fsdev-fs0,mount_tag=kataShared")]
    assert device_options(AgentChannel(vsock_cid=3), "q35") == [
        ("-device", "vhost-vsock-pci,id=agent,guest-cid=3")]


def test_scsi_controller_and_keyval_escaping() -> None:
    argv = build_argv(spec(scsi_controller=True, name="a,b"))
    assert argv[2] == "a,,b"
    assert "virtio-scsi-pci,id=scsi0" in argv
    assert keyval({"driver": "x", "id": "d", "on": True, "skip": None, "n": {"k": 1}}, head="driver") == \
        "x,id=d,on=on,n.k=1"


def test_device_descriptions_validate_themselves() -> None:
    with pytest.raises(ValueError, match="either socket_path or vsock_cid"):
        AgentChannel()
    with pytest.raises(ValueError, match="bad MAC"):
        NetDevice("eth0", "02:00:00:00:00", tap_name="tap0")
    with pytest.raises(ValueError, match="bad device id"):
        BlockDevice("/x", "0disk")
    with pytest.raises(ValueError, match="virtiofsd socket_path"):
        SharedFs("tag", "/src")
    assert AgentChannel("/run/a.sock").address == "unix:///run/a.sock"
    assert AgentChannel(vsock_cid=3).address == "vsock://3:1024"


def test_spec_from_config_is_bounded_by_the_host(tmp_path: Path) -> None:
    paths = VmPaths(tmp_path)
    config = HypervisorConfig(default_maxvcpus=64, default_maxmemory=0, kernel_params="x=1")
    shared = shared_fs_for(config, paths, str(tmp_path / "shared"))
    assert shared is not None
    devices = with_standard_devices(paths, [shared])
    host = HostResources(cpus=2, memory_mib=24000, tsc_khz=2596146)
    made = vm_spec(config, paths=paths, accelerator="tcg", devices=devices, host=host, name="vm")
    assert (made.max_vcpus, made.max_memory_mib, made.tsc_khz, made.hotplug_ports) == (2, 24000, 0, 4)
    assert made.qmp_socket == str(tmp_path / "qmp.sock")
    assert [type(d).__name__ for d in made.devices] == ["Console", "AgentChannel", "SharedFs"]
    micro = vm_spec(HypervisorConfig(machine_type="microvm"), paths=paths, accelerator="kvm", devices=devices,
                    host=host, name="vm")
    assert (micro.max_vcpus, micro.max_memory_mib, micro.hotplug_ports, micro.tcg_tb_size) == (0, 0, 0, 0)
    assert micro.cpu == "host,pmu=off" and micro.tsc_khz == 2596146
    assert "tsc_early_khz=2596146" in kernel_command_line(micro)
    assert shared_fs_for(HypervisorConfig(shared_fs="none"), paths, "/x") is None
    assert made.free_page_reporting
    kept = vm_spec(HypervisorConfig(reclaim_guest_freed_memory=False), paths=paths, accelerator="tcg",
                   devices=devices, host=host, name="vm")
    assert not kept.free_page_reporting


def test_tsc_frequency_comes_from_cpuinfo() -> None:
    assert _tsc_khz("processor\t: 0\ncpu MHz\t\t: 2596.146\n") == 2596146
    assert _tsc_khz("processor\t: 0\n") == 0


def test_a_missing_rootfs_image_says_how_to_make_it(tmp_path: Path) -> None:
    config = HypervisorConfig(image=str(tmp_path / "kata-rootfs.img"))
    with pytest.raises(HypervisorError, match=r"rootfs image .*kata-rootfs.img: No such file or directory "
                                              r"\(kata-runtime image build --rootfs-image erofs makes it\)"):
        rootfs_image(config)

"""Boot the built guest image under QEMU (TCG): PID-1 init runs, the agent answers, the VM powers off."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kata.image.bootcheck import BootedVm, boot_and_check, qemu_argv
from kata.image.initrd import InitrdBuild, build_initrd
from kata.image.kernel import DEFAULT_CACHE_DIR, DEFAULT_FLAVOUR, KernelArtifacts, fetch_kernel

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86"),
]


@pytest.fixture(scope="module")
def image() -> tuple[KernelArtifacts, InitrdBuild]:
    """The default kernel and its initrd, built once (or reused from the shared cache)."""
    kernel = fetch_kernel(DEFAULT_FLAVOUR, DEFAULT_CACHE_DIR)
    return kernel, build_initrd(kernel, DEFAULT_CACHE_DIR)


def test_boot_check_sandbox_and_power_off(image: tuple[KernelArtifacts, InitrdBuild], tmp_path: Path) -> None:
    kernel, initrd = image
    report = boot_and_check(kernel.vmlinux, initrd.path, tmp_path, timeout=90, sandbox_id="sb-test-1")
    # boot_and_check returns once QEMU has exited by itself (it raises after 10 s otherwise).
    assert report.exit_code == 0
    assert report.to_exit - report.to_ready < 5
    init_lines = [line for line in report.console.splitlines() if 'msg="kata guest init"' in line]
    assert len(init_lines) == 1, report.console
    assert f"kernel={kernel.release}" in init_lines[0] and "pid=1 " in init_lines[0]
    assert f"image={initrd.key}" in init_lines[0]
    assert 'msg="agent channel open"' in report.console
    after = report.console.split('msg="sandbox created"')[1]
    assert "sandbox=sb-test-1" in after and 'msg="powering off"' in after
    assert "level=error" not in report.console, report.console


def test_qemu_is_killed_when_the_test_fails(image: tuple[KernelArtifacts, InitrdBuild],
                                            tmp_path: Path) -> None:
    kernel, initrd = image
    sock = tmp_path / "agent.sock"
    argv = qemu_argv(kernel.vmlinux, initrd.path, console_log=tmp_path / "console.log", agent_socket=sock)
    with pytest.raises(RuntimeError), BootedVm(argv) as vm:
        vm.connect(sock, 30).close()
        raise RuntimeError("test failed while the guest boots")
    assert vm.process is not None and vm.process.poll() is not None


def test_a_sandbox_boots_from_the_erofs_image_on_virtio_pmem_with_dax(tmp_path: Path) -> None:
    """The rootfs image + boot initrd (`kata-runtime image build --rootfs-image erofs`): the guest's root
    is an overlay on the DAX-mounted image, the agent runs from it, no tmpfs copy of the image exists."""
    from dataclasses import replace

    from kata.config import load_config
    from kata.image.bootinitrd import build_boot_initrd
    from kata.image.rootfs import build_rootfs_image
    from kata.sandbox import OutputBuffer, Sandbox
    from tests.agent.sandbox_support import make_bundle

    kernel = fetch_kernel(DEFAULT_FLAVOUR, DEFAULT_CACHE_DIR)
    rootfs = build_rootfs_image(kernel, DEFAULT_CACHE_DIR, "erofs")
    boot = build_boot_initrd(kernel, DEFAULT_CACHE_DIR)
    config = load_config().config
    config = replace(config, hypervisor=replace(config.hypervisor, kernel=str(kernel.vmlinux), initrd=str(boot.path),
                                                image=str(rootfs)))
    bundle = make_bundle(tmp_path / "bundle", "sh", "-c", "uname -r; grep Shmem: /proc/meminfo")
    with Sandbox.create(config, root=tmp_path / "root", sandbox_id="dax") as sb:
        out = OutputBuffer()
        container = sb.create_container(bundle, stdout=out)
        container.start()
        assert container.wait() == 0, out.getvalue()
        release, shmem = out.getvalue().decode().splitlines()
        assert release == kernel.release
        assert int(shmem.split()[1]) < 4096, shmem  # kB: the root is not a tmpfs copy (the initrd's is 23 MB)
        console = Path(sb.inner.record.vm.console_log).read_text()
    assert "kata boot initrd:" not in console, console
    init_line = next(line for line in console.splitlines() if 'msg="kata guest init"' in line)
    assert "pid=1 " in init_line and f"kernel={kernel.release}" in init_line
    assert "level=error" not in console, console


def test_on_microvm_the_image_is_a_virtio_blk_disk_found_by_its_serial(tmp_path: Path) -> None:
    """No PCI on microvm, so no virtio-pmem: the default configuration's image becomes a read-only
    virtio-blk disk, which the boot initrd finds by its serial and mounts without DAX."""
    from dataclasses import replace

    from kata.config import load_config
    from kata.image.bootinitrd import ROOTFS_SERIAL
    from kata.sandbox import OutputBuffer, Sandbox
    from tests.agent.sandbox_support import make_bundle

    config = load_config().config
    if not (Path(config.hypervisor.image).exists() and Path(config.hypervisor.initrd).exists()):
        pytest.skip("no rootfs image and boot initrd (kata-runtime image build --rootfs-image erofs)")
    config = replace(config, hypervisor=replace(config.hypervisor, machine_type="microvm"))
    bundle = make_bundle(tmp_path / "bundle", "sh", "-c", "echo up")
    with Sandbox.create(config, root=tmp_path / "root", sandbox_id="micro") as sb:
        argv = Path(f"/proc/{sb.pids[0]}/cmdline").read_bytes().split(b"\0")
        assert f"virtio-blk-device,id=rootfs,drive=drive-rootfs,serial={ROOTFS_SERIAL}".encode() in argv
        out = OutputBuffer()
        container = sb.create_container(bundle, stdout=out)
        container.start()
        assert container.wait() == 0 and out.getvalue() == b"up\n"
        console = Path(sb.inner.record.vm.console_log).read_text()
    assert "kata boot initrd:" not in console and "level=error" not in console, console

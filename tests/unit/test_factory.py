"""VM factory without booting: clone argv, template keys and staleness, sources, KSM settings."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from kata.config import Config
from kata.config.schema import FactoryConfig, HypervisorConfig
from kata.errors import HypervisorError, StateError
from kata.factory import DirectSource, Template, TemplateSource, vm_source
from kata.factory.source import copy_sparse
from kata.factory.template import TemplateInfo, key_files, template_devices, template_key
from kata.hypervisor import MemoryImage, SharedFs, Templatable
from kata.hypervisor.devices import AgentChannel, Console
from kata.hypervisor.qemu.args import MemoryBackend, VmSpec, build_argv
from kata.hypervisor.qemu.driver import QemuHypervisor

W = "/run/kata/sb1"


def spec(**changes: object) -> VmSpec:
    base: dict[str, object] = {
        "qemu": "/usr/bin/qemu-system-x86_64", "name": "sandbox-sb1", "machine": "q35", "accelerator": "tcg",
        "cpu": "max", "kernel": "/k/vmlinux", "qmp_socket": f"{W}/qmp.sock",
        "devices": (Console(f"{W}/console.log"), AgentChannel(f"{W}/agent.sock")),
    }
    base.update(changes)
    return VmSpec(**base)  # type: ignore[arg-type]


def test_a_clone_waits_for_its_state_on_a_private_file_mapping() -> None:
    argv = build_argv(spec(memory_backend=MemoryBackend("file", "/tpl/memory", share=False), incoming=True))
    assert argv[-2:] == ["-incoming", "defer"]
    assert "memory-backend-file,id=mem,size=256M,mem-path=/tpl/memory,share=off" in argv
    template = build_argv(spec(memory_backend=MemoryBackend("file", "/tpl/memory", share=True)))
    assert "-incoming" not in template
    assert "memory-backend-file,id=mem,size=256M,mem-path=/tpl/memory,share=on" in template


def test_virtio_fs_cannot_be_restored() -> None:
    fs = SharedFs("kataShared", f"{W}/shared", socket_path=f"{W}/virtiofsd.sock")
    with pytest.raises(HypervisorError, match="cannot be migrated"):
        build_argv(spec(devices=(fs,), incoming=True))


def config_in(tmp_path: Path, **hypervisor: object) -> Config:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"kernel")
    hv = HypervisorConfig(kernel=str(kernel), initrd="", image="", accelerator="tcg", **hypervisor)  # type: ignore[arg-type]
    return Config(hypervisor=hv, factory=FactoryConfig(enable_template=True, template_path=str(tmp_path / "tpl")))


def prepared(config: Config, workdir: Path, sandbox_id: str = "") -> QemuHypervisor:
    vm = QemuHypervisor(config.hypervisor, workdir, sandbox_id=sandbox_id, accelerator="tcg")
    asyncio.run(vm.prepare(template_devices(config, workdir)))
    return vm


def test_template_and_clone_identities_match_whatever_their_host_paths(tmp_path: Path) -> None:
    config = config_in(tmp_path, shared_fs="virtio-9p")
    template = prepared(config, tmp_path / "tpl" / "vm")
    clone = prepared(config, tmp_path / "run" / "sb1", sandbox_id="sb1")
    clone.use_memory_image(MemoryImage("/elsewhere/memory", shared=False, restore_from="/tpl/state"))
    assert isinstance(clone, Templatable)
    assert template.clone_identity() == clone.clone_identity()
    assert "<workdir>/shared" in template.clone_identity() and str(tmp_path / "tpl") not in template.clone_identity()
    bigger = prepared(replace(config, hypervisor=replace(config.hypervisor, default_memory=512)), tmp_path / "x")
    assert bigger.clone_identity() != template.clone_identity()
    asyncio.run(clone.stop())
    with pytest.raises(StateError):
        clone.use_memory_image(MemoryImage("/m", shared=True))


def test_template_devices_keep_9p_and_leave_virtio_fs_for_hotplug(tmp_path: Path) -> None:
    assert template_devices(config_in(tmp_path), tmp_path) == []
    (fs,) = template_devices(config_in(tmp_path, shared_fs="virtio-9p"), tmp_path)
    assert isinstance(fs, SharedFs) and fs.kind == "virtio-9p" and fs.source == str(tmp_path / "shared")


def test_a_changed_kernel_changes_the_key(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    files = key_files(config)
    assert config.hypervisor.kernel in files and config.hypervisor.path in files
    key = template_key("argv", files)
    assert template_key("argv", files) == key and template_key("other argv", files) != key
    os.utime(config.hypervisor.kernel, ns=(1, 1))
    assert template_key("argv", files) != key


def test_status_sees_a_stale_template_and_destroy_removes_it(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    template = Template(config)
    assert asyncio.run(template.status()).info is None
    key = asyncio.run(template.current_key())
    template.paths.root.mkdir()
    info = TemplateInfo(key=key, created=1.0, boot_seconds=6.0, memory_mib=256, state_bytes=1, shared_fs="virtio-fs",
                        kernel=config.hypervisor.kernel)
    template.paths.info.write_text(json.dumps(info.to_json()))
    assert template.read_info() == info and asyncio.run(template.status()).fresh
    Path(config.hypervisor.kernel).write_bytes(b"another kernel")
    status = asyncio.run(template.status())
    assert status.info == info and not status.fresh
    assert asyncio.run(template.destroy()) and not template.paths.root.exists() and not template.paths.lock.exists()
    assert not asyncio.run(template.destroy())


def test_the_configuration_picks_the_source(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    assert isinstance(vm_source(config), TemplateSource)
    assert isinstance(vm_source(config, host_mode=True), DirectSource)
    assert isinstance(vm_source(replace(config, factory=FactoryConfig())), DirectSource)
    source = vm_source(config)
    assert source.share_wait > 0  # virtio-fs is hotplugged into clones
    assert vm_source(config_in(tmp_path, shared_fs="virtio-9p")).share_wait == 0


def test_copy_sparse_keeps_holes(tmp_path: Path) -> None:
    source = tmp_path / "memory"
    with source.open("wb") as fh:
        fh.truncate(64 << 20)
        fh.seek(1 << 20)
        fh.write(b"x" * 4096)
    asyncio.run(copy_sparse(source, tmp_path / "copy"))
    copy = (tmp_path / "copy").stat()
    assert copy.st_size == 64 << 20 and copy.st_blocks * 512 < 1 << 20
    assert (tmp_path / "copy").read_bytes() == source.read_bytes()


def test_the_cache_server_refuses_an_endpoint_too_deep_for_its_vms_sockets(tmp_path: Path) -> None:
    from kata.errors import FactoryError
    from kata.factory.cache_server import serve_cache

    deep = tmp_path / ("d" * 60) / "cache.sock"
    config = replace(Config(), factory=FactoryConfig(vm_cache_number=1, vm_cache_endpoint=str(deep)))
    with pytest.raises(FactoryError, match=r"too deep: its VMs. sockets .* would exceed the 107 bytes"):
        asyncio.run(serve_cache(config))
    assert not deep.parent.exists()  # nothing was made

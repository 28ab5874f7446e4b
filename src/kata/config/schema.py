"""Typed configuration schema: frozen dataclasses whose fields are the TOML keys pykata reads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AgentConfig",
    "Config",
    "FactoryConfig",
    "HypervisorConfig",
    "OptionSpec",
    "RuntimeConfig",
    "option",
    "option_spec",
]

GUEST_DIR = "/var/cache/pykata/guest"


@dataclass(frozen=True)
class OptionSpec:
    """Validation facts of one key: allowed values and numeric bounds."""

    choices: tuple[str, ...] = ()
    minimum: int | None = None
    annotatable: bool = True


def option(default: Any, *, choices: tuple[str, ...] = (), minimum: int | None = None,
           annotatable: bool = True) -> Any:
    """A dataclass field carrying an :class:`OptionSpec` in its metadata."""
    spec = OptionSpec(choices=choices, minimum=minimum, annotatable=annotatable)
    if isinstance(default, list):
        items = tuple(default)
        return field(default_factory=lambda: list(items), metadata={"spec": spec})
    return field(default=default, metadata={"spec": spec})


def option_spec(f: dataclasses.Field[Any]) -> OptionSpec:
    """The :class:`OptionSpec` of a schema field."""
    spec = f.metadata.get("spec", OptionSpec())
    assert isinstance(spec, OptionSpec)
    return spec


@dataclass(frozen=True)
class HypervisorConfig:
    """``[hypervisor.<name>]``: the VMM and the guest it boots."""

    path: str = option("/usr/bin/qemu-system-x86_64")
    kernel: str = option(f"{GUEST_DIR}/vmlinux")
    initrd: str = option(f"{GUEST_DIR}/kata-boot-initrd.img")
    image: str = option(f"{GUEST_DIR}/kata-rootfs.img")
    kernel_params: str = option("")
    machine_type: str = option("q35", choices=("q35", "microvm"))
    accelerator: str = option("auto", choices=("auto", "kvm", "tcg"))
    kvm_probe_timeout: int = option(10, minimum=1, annotatable=False)
    tcg_tb_size: int = option(32, minimum=0)
    default_vcpus: int = option(1, minimum=1)
    default_maxvcpus: int = option(0, minimum=0)
    default_memory: int = option(256, minimum=64)
    default_maxmemory: int = option(0, minimum=0)
    memory_slots: int = option(10, minimum=1)
    file_mem_backend: str = option("")
    reclaim_guest_freed_memory: bool = option(True)
    shared_fs: str = option("virtio-fs", choices=("virtio-fs", "virtio-9p", "none"))
    virtio_fs_daemon: str = option("/usr/lib/qemu/virtiofsd")
    virtio_fs_cache: str = option("auto", choices=("auto", "always", "none"))
    virtio_fs_extra_args: list[str] = option([])
    block_device_driver: str = option("virtio-blk", choices=("virtio-blk", "virtio-scsi"))
    enable_debug: bool = option(False)
    enable_annotations: list[str] = option([], annotatable=False)
    valid_hypervisor_paths: list[str] = option(["/usr/bin/qemu-system-*"], annotatable=False)
    valid_virtio_fs_daemon_paths: list[str] = option(["/usr/lib/qemu/virtiofsd"], annotatable=False)


@dataclass(frozen=True)
class AgentConfig:
    """``[agent.kata]``: the guest agent and the channel to it."""

    enable_debug: bool = option(False)
    dial_timeout: int = option(30, minimum=1)
    kernel_modules: list[str] = option([])


@dataclass(frozen=True)
class RuntimeConfig:
    """``[runtime]``: host-side behaviour of the runtime, shim and sandbox daemon."""

    enable_debug: bool = option(False)
    internetworking_model: str = option("tcfilter", choices=("tcfilter", "macvtap", "none"))
    disable_new_netns: bool = option(False)
    sandbox_cgroup_only: bool = option(False)
    disable_guest_seccomp: bool = option(True)
    # Sandbox daemons forked by `kata-runtime fork-server` (docs/shim.md); host-wide, not per pod.
    shim_fork_server: bool = option(False, annotatable=False)


@dataclass(frozen=True)
class FactoryConfig:
    """``[factory]``: VM templates and the pre-booted VM cache."""

    enable_template: bool = option(False, annotatable=False)
    template_path: str = option("/run/vc/vm/template", annotatable=False)
    vm_cache_number: int = option(0, minimum=0, annotatable=False)
    vm_cache_endpoint: str = option("/var/run/kata-containers/cache.sock", annotatable=False)
    enable_ksm: bool = option(False, annotatable=False)


@dataclass(frozen=True)
class Config:
    """The whole effective configuration."""

    hypervisor_name: str = "qemu"
    hypervisor: HypervisorConfig = field(default_factory=HypervisorConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    factory: FactoryConfig = field(default_factory=FactoryConfig)

    def to_toml_dict(self) -> dict[str, Any]:
        """The configuration in the nesting of configuration.toml."""
        return {
            "hypervisor": {self.hypervisor_name: dataclasses.asdict(self.hypervisor)},
            "agent": {"kata": dataclasses.asdict(self.agent)},
            "runtime": dataclasses.asdict(self.runtime),
            "factory": dataclasses.asdict(self.factory),
        }

"""What `kata-runtime env` reports: effective config, paths, versions and host facts."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from kata import __version__
from kata.config import LoadedConfig
from kata.host import facts
from kata.hypervisor.accel import DEFAULT_CACHE_FILE, cached_choice

__all__ = ["collect_env", "file_facts"]

ENV_FORMAT_VERSION = "1"


def file_facts(path: str) -> dict[str, Any]:
    """Where ``path`` leads and whether it is there."""
    if not path:
        return {"path": "", "present": False}
    target = Path(path)
    info: dict[str, Any] = {"path": path, "present": target.is_file()}
    if target.is_file():
        info.update(resolved=str(target.resolve()), size=target.stat().st_size)
    return info


def _kernel_facts(path: str) -> dict[str, Any]:
    info = file_facts(path)
    meta = Path(info.get("resolved", "/nonexistent")).parent / "kernel.json"
    if meta.is_file():
        data = json.loads(meta.read_text())
        info.update({k: data[k] for k in ("release", "package", "version", "flavour") if k in data})
    return info


def _accelerator(loaded: LoadedConfig, cache_file: Path) -> dict[str, Any]:
    hv = loaded.config.hypervisor
    if hv.accelerator != "auto":
        return {"setting": hv.accelerator, "chosen": hv.accelerator, "reason": "set by configuration"}
    cached = cached_choice(hv, cache_file)
    if cached is None:
        return {"setting": "auto", "chosen": "", "reason": "not probed yet: run `kata-runtime check`"}
    return {"setting": "auto", "chosen": cached.accelerator, "reason": cached.reason}


def _host() -> dict[str, Any]:
    kvm = facts.kvm_status()
    return {
        "kernel": platform.release(),
        "architecture": platform.machine(),
        "cpu": facts.cpu_model(),
        "cpus": os.cpu_count() or 0,
        "boot_id": facts.boot_id(),
        "kvm": {"present": kvm.present, "usable_device": kvm.usable, "detail": kvm.detail},
        "vhost_vsock": facts.device_usable("/dev/vhost-vsock")[0],
        "tun": facts.device_usable("/dev/net/tun")[0],
        "cgroup": facts.cgroup_version(),
    }


def _ksm(enabled: bool) -> dict[str, Any]:
    """KSM as the kernel has it, and whether the configuration drives it (``[factory] enable_ksm``)."""
    from kata.factory.ksm import ksm_status

    status = ksm_status()
    if not status.available:
        return {"available": False, "enable_ksm": enabled}
    return {"available": True, "enable_ksm": enabled, "run": status.run, "pages_shared": status.pages_shared,
            "pages_sharing": status.pages_sharing, "saved_mib": round(status.saved_mib, 1)}


def collect_env(loaded: LoadedConfig, *, root: str, cache_file: Path = DEFAULT_CACHE_FILE) -> dict[str, Any]:
    """The whole report as plain data (JSON- and TOML-serialisable)."""
    hv = loaded.config.hypervisor
    return {
        "meta": {"version": ENV_FORMAT_VERSION},
        "runtime": {
            "version": __version__,
            "python": sys.version.split()[0],
            "root": root,
            "config": {
                "path": str(loaded.path) if loaded.path else "(built-in defaults)",
                "fragments": [str(p) for p in loaded.fragments],
                "warnings": list(loaded.warnings),
            },
        },
        "hypervisor": {
            "name": loaded.config.hypervisor_name,
            "path": hv.path,
            "version": facts.program_version(hv.path) or "(not found)",
            "accelerator": _accelerator(loaded, cache_file),
            "virtio_fs_daemon": file_facts(hv.virtio_fs_daemon),
        },
        "kernel": _kernel_facts(hv.kernel),
        "initrd": file_facts(hv.initrd),
        "image": file_facts(hv.image),
        "host": _host(),
        "ksm": _ksm(loaded.config.factory.enable_ksm),
        "config": loaded.config.to_toml_dict(),
    }

"""Hypervisor drivers by configured name; drivers are imported only when asked for."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from kata.config.schema import HypervisorConfig
from kata.errors import ConfigError
from kata.hypervisor.base import Hypervisor

__all__ = ["HYPERVISORS", "HypervisorFactory", "hypervisor_names", "new_hypervisor", "register_hypervisor"]

HypervisorFactory = Callable[..., Hypervisor]

# name -> "module:Class". Later: "firecracker", "cloud-hypervisor".
HYPERVISORS: dict[str, str] = {
    "qemu": "kata.hypervisor.qemu.driver:QemuHypervisor",
}
_registered: dict[str, HypervisorFactory] = {}


def register_hypervisor(name: str, factory: HypervisorFactory) -> None:
    """Make ``name`` create VMs with ``factory`` (tests register FakeHypervisor this way)."""
    _registered[name] = factory


def hypervisor_names() -> list[str]:
    """Every name :func:`new_hypervisor` accepts."""
    return sorted({*HYPERVISORS, *_registered})


def _factory(name: str) -> HypervisorFactory:
    if name in _registered:
        return _registered[name]
    module, _, attr = HYPERVISORS[name].partition(":")
    factory: HypervisorFactory = getattr(importlib.import_module(module), attr)
    return factory


def new_hypervisor(name: str, config: HypervisorConfig, workdir: Path, *, sandbox_id: str = "",
                   accelerator: str | None = None) -> Hypervisor:
    """A driver for one VM: ``name`` as in ``[hypervisor.<name>]``, working dir, sandbox id.

    Raises:
        ConfigError: no driver has that name.
    """
    if name not in HYPERVISORS and name not in _registered:
        raise ConfigError(f"unknown hypervisor {name!r} (known: {', '.join(hypervisor_names())})",
                          key="hypervisor")
    return _factory(name)(config, workdir, sandbox_id=sandbox_id, accelerator=accelerator)

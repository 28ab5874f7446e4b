"""Kernel module resolution: modules.dep parsing and dependency load order."""

from __future__ import annotations

from pathlib import Path

import pytest

from kata.errors import ImageError
from kata.image.modules import (
    GUEST_MODULES,
    ModuleRequest,
    module_name,
    parse_modules_builtin,
    parse_modules_dep,
    resolve_kernel_modules,
    resolve_modules,
)

DEP = """\
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko \
kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko \
kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
"""


def _names(paths: tuple[str, ...]) -> list[str]:
    return [module_name(p) for p in paths]


def test_module_name_normalises_dashes_and_suffixes() -> None:
    assert module_name("kernel/drivers/char/hw_random/virtio-rng.ko") == "virtio_rng"
    assert module_name("kernel/fs/erofs/erofs.ko.xz") == "erofs"


def test_dependencies_load_before_their_users_and_only_once() -> None:
    deps = parse_modules_dep(DEP)
    requests = [ModuleRequest("virtio_pci", True), ModuleRequest("virtio_console", True),
                ModuleRequest("virtio_net")]
    order = _names(resolve_modules(requests, deps, frozenset()).load_order)
    assert order == ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
                     "virtio_console", "failover", "net_failover", "virtio_net"]


def test_order_is_valid_whatever_the_listing_order() -> None:
    shuffled = DEP.replace("kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko",
                           "kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko")
    deps = parse_modules_dep(shuffled)
    order = _names(resolve_modules([ModuleRequest("virtio_net")], deps, frozenset()).load_order)
    for module, _ in [("virtio_net", 0)]:
        for dep in ("virtio", "virtio_ring", "failover", "net_failover"):
            assert order.index(dep) < order.index(module)
    assert order.index("virtio_ring") < order.index("virtio")


def test_builtin_and_missing_modules() -> None:
    deps = parse_modules_dep(DEP)
    resolution = resolve_modules([ModuleRequest("ext4"), ModuleRequest("9p"), ModuleRequest("virtio_rng")],
                                 deps, parse_modules_builtin("kernel/fs/ext4/ext4.ko\n"))
    assert resolution.builtin == ("ext4",)
    assert resolution.missing == ("9p",)
    assert _names(resolution.load_order) == ["virtio_ring", "virtio", "virtio_rng"]


def test_missing_required_module_fails() -> None:
    with pytest.raises(ImageError, match="virtio_console"):
        resolve_modules([ModuleRequest("virtio_console", True, "agent channel")], {}, frozenset())


def test_dependency_without_entry_fails() -> None:
    deps = parse_modules_dep("kernel/a.ko: kernel/b.ko\n")
    with pytest.raises(ImageError, match=r"kernel/b\.ko"):
        resolve_modules([ModuleRequest("a")], deps, frozenset())


def test_malformed_modules_dep() -> None:
    with pytest.raises(ImageError, match="line 1"):
        parse_modules_dep("kernel/a.ko kernel/b.ko\n")


def test_resolve_kernel_modules_reads_the_directory(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(DEP)
    (tmp_path / "modules.builtin").write_text("kernel/fs/fuse/fuse.ko\n")
    resolution = resolve_kernel_modules(tmp_path, GUEST_MODULES)
    assert "fuse" in resolution.builtin
    assert _names(resolution.load_order)[:5] == ["virtio_ring", "virtio", "virtio_pci_modern_dev",
                                                 "virtio_pci_legacy_dev", "virtio_pci"]


def test_compressed_modules_are_refused(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(DEP.replace("virtio_console.ko:", "virtio_console.ko.xz:"))
    with pytest.raises(ImageError, match="compressed"):
        resolve_kernel_modules(tmp_path, [ModuleRequest("virtio_console", True)])


def test_missing_modules_dep_says_run_depmod(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="depmod"):
        resolve_kernel_modules(tmp_path)

"""The minimal kernel's config fragment and the checks around its build (kata.image.kbuild)."""

from __future__ import annotations

import pytest

from kata.cli import image as cli_image
from kata.errors import ImageError
from kata.image import kernel
from kata.image.kbuild import check_config, config_key, fragment_options, fragment_text
from kata.image.modules import GUEST_MODULES, resolve_modules


def test_the_shipped_fragment_builds_in_what_the_guest_needs() -> None:
    options = fragment_options(fragment_text())
    assert options["CONFIG_MODULES"] == "n"  # nothing to load at boot
    for needed in ("CONFIG_PVH", "CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_CONSOLE",
                   "CONFIG_VIRTIO_FS", "CONFIG_9P_FS", "CONFIG_NET_9P_VIRTIO", "CONFIG_VIRTIO_VSOCKETS",
                   "CONFIG_OVERLAY_FS", "CONFIG_EROFS_FS", "CONFIG_VIRTIO_PMEM", "CONFIG_FS_DAX",
                   "CONFIG_VIRTIO_NET", "CONFIG_VIRTIO_BLK", "CONFIG_PID_NS", "CONFIG_MEMCG",
                   "CONFIG_SECCOMP_FILTER", "CONFIG_HOTPLUG_CPU", "CONFIG_MEMORY_HOTPLUG",
                   "CONFIG_VIRTIO_BALLOON", "CONFIG_PAGE_REPORTING", "CONFIG_RD_LZ4"):
        assert options[needed] == "y", needed


def test_fragment_lines_must_be_options() -> None:
    assert fragment_options("# c\n\nCONFIG_A=y\nCONFIG_B=\"x\"\n") == {"CONFIG_A": "y", "CONFIG_B": '"x"'}
    with pytest.raises(ImageError, match="line 2: not CONFIG_X=value"):
        fragment_options("CONFIG_A=y\nA=y\n")


def test_options_dropped_by_kconfig_are_named() -> None:
    wanted = {"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_C": "n", "CONFIG_D": "64"}
    config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_D=32\n"
    assert check_config(wanted, config) == ["CONFIG_B", "CONFIG_D"]  # n needs no check


def test_the_cache_key_follows_source_fragment_and_compiler() -> None:
    base = config_key("6.1.1-1", "CONFIG_A=y\n", "gcc 12")
    assert base == config_key("6.1.1-1", "CONFIG_A=y\n", "gcc 12")
    assert len({base, config_key("6.1.1-2", "CONFIG_A=y\n", "gcc 12"),
                config_key("6.1.1-1", "CONFIG_A=n\n", "gcc 12"), config_key("6.1.1-1", "CONFIG_A=y\n", "gcc 13")}) == 4


def test_a_kernel_without_modules_needs_nothing_loaded() -> None:
    builtin = frozenset(request.name for request in GUEST_MODULES)
    resolution = resolve_modules(GUEST_MODULES, {}, builtin)
    assert resolution.load_order == () and resolution.missing == ()


def test_the_cli_offers_the_builders_flavours_and_default() -> None:
    assert set(cli_image.FLAVOURS) == set(kernel.FLAVOURS)
    assert cli_image.DEFAULT_FLAVOUR == kernel.DEFAULT_FLAVOUR == "minimal"

"""`image build`: fetch the kernel, build (or reuse) the initrd and point the configured paths at them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kata.config.schema import GUEST_DIR
from kata.image.cache import replace_symlink
from kata.image.initrd import DEFAULT_COMPRESSION, INITRD_NAME, InitrdBuild, build_initrd, link_initrd
from kata.image.kernel import DEFAULT_FLAVOUR, KernelArtifacts, fetch_kernel, link_guest_kernel
from kata.image.progress import Reporter

__all__ = ["GuestImage", "build_guest_image", "guest_dir_for", "guest_dir_with_9p", "kernel_has"]


@dataclass(frozen=True)
class GuestImage:
    """The kernel and initrd a build produced, and the rootfs image (linked in the guest dir, with the
    boot initrd that mounts it for an erofs image) when one was asked for."""

    kernel: KernelArtifacts
    initrd: InitrdBuild
    initrd_link: Path
    rootfs: Path | None = None
    boot_initrd: Path | None = None


def guest_dir_for(flavour: str) -> Path:
    """Where a flavour's kernel and initrd are linked: the configured defaults for the default flavour
    (``minimal``), ``/var/cache/pykata/guest-<flavour>`` for others (``cloud``, ``generic``)."""
    return Path(GUEST_DIR) if flavour == DEFAULT_FLAVOUR else Path(f"{GUEST_DIR}-{flavour}")


def kernel_has(guest_dir: Path, option: str) -> bool:
    """Whether the kernel linked in ``guest_dir`` was built with ``option`` (``CONFIG_X``) built in or as
    a module; False when the guest dir or the kernel's config is missing."""
    try:
        directory = Path(json.loads((guest_dir / "kernel.json").read_text())["directory"])
        config = (directory / "config").read_text()
    except (OSError, ValueError, KeyError):
        return False
    return any(line in (f"{option}=y", f"{option}=m") for line in config.splitlines())


def guest_dir_with_9p() -> Path:
    """A guest dir whose kernel has 9p: the default one when it has (the minimal kernel does), else
    ``guest-generic`` (for a default dir built with ``--flavour cloud``, which has no 9p at all)."""
    default = Path(GUEST_DIR)
    return default if kernel_has(default, "CONFIG_9P_FS") else guest_dir_for("generic")


def build_guest_image(*, flavour: str, cache_dir: Path, guest_dir: Path,
                      compression: str = DEFAULT_COMPRESSION, force: bool = False,
                      rootfs_format: str | None = None,
                      reporter: Reporter | None = None) -> GuestImage:
    """Fetch the ``flavour`` kernel, build its initrd, and link both into ``guest_dir``.

    The kernel and initrd are linked together: the initrd's modules only load into its own kernel.

    Raises:
        ImageError: when fetching or building fails.
    """
    report = reporter or Reporter()
    with report.step("guest kernel") as step:
        kernel = fetch_kernel(flavour, cache_dir)
        step.detail = f"{kernel.release} ({kernel.package} {kernel.version})"
    initrd = build_initrd(kernel, cache_dir, compression=compression, force=force, reporter=report)
    rootfs = boot = None
    if rootfs_format is not None:
        from kata.image.rootfs import build_rootfs_image

        rootfs = build_rootfs_image(kernel, cache_dir, rootfs_format, force=force, reporter=report)
        if rootfs_format == "erofs":
            from kata.image.bootinitrd import build_boot_initrd

            boot = build_boot_initrd(kernel, cache_dir, force=force, reporter=report).path
    link_guest_kernel(kernel, guest_dir)
    link = guest_dir / INITRD_NAME
    link_initrd(initrd, link)
    if rootfs is not None:
        replace_symlink(guest_dir / rootfs.name, rootfs)
    if boot is not None:
        replace_symlink(guest_dir / boot.name, boot)
    return GuestImage(kernel, initrd, link, rootfs and guest_dir / rootfs.name, boot and guest_dir / boot.name)

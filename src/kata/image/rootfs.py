"""The initrd's tree as a filesystem image (erofs or ext4) for virtio-pmem (DAX) or virtio-blk."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from kata.errors import ImageError
from kata.image import cache
from kata.image.initrd import EARLY_DEVICES, build_inputs, stage_tree
from kata.image.kernel import KernelArtifacts
from kata.image.progress import Reporter

__all__ = ["ROOTFS_FORMATS", "build_rootfs_image", "make_filesystem", "rootfs_size"]

ROOTFS_FORMATS = ("erofs", "ext4")
# virtio-pmem and nvdimm map the file as guest memory: the filesystem in whole 2 MiB (DAX huge pages),
# the file padded (sparse) to a whole 128 MiB memory section, as Kata's image builder does: a pc-dimm
# hotplugged after the device starts where it ends, and Linux onlines only whole sections.
ALIGNMENT = 2 << 20
DEVICE_ALIGNMENT = 128 << 20
ROOTFS_NAME = "kata-rootfs.img"


def rootfs_size(tree_bytes: int) -> int:
    """An ext4 size for a tree of ``tree_bytes``: room for metadata, rounded up to 2 MiB."""
    wanted = int(tree_bytes * 1.25) + (16 << 20)
    return -(-wanted // ALIGNMENT) * ALIGNMENT


def _tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*"))


def _mkfs(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ImageError(f"{argv[0]} failed: {(proc.stderr or proc.stdout).strip()[-1000:]}")


def make_filesystem(root: Path, out: Path, fmt: str) -> None:
    """Write the tree at ``root`` as an uncompressed, uninlined (DAX-capable) erofs or a 4 KiB-block ext4 image.

    Raises:
        ImageError: for an unknown format or a failing mkfs.
    """
    if fmt == "erofs":
        # noinline_data: erofs serves only plain (not tail-packed) files through DAX; the others would
        # be copied into the guest's page cache (16 MB of 24 here).
        _mkfs(["mkfs.erofs", "--quiet", "--all-root", "-T0", "-Enoinline_data", str(out), str(root)])
    elif fmt == "ext4":
        with out.open("wb") as fh:
            fh.truncate(rootfs_size(_tree_bytes(root)))
        _mkfs(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "kata-rootfs", "-O", "^has_journal",
               "-E", "root_owner=0:0", "-d", str(root), str(out)])
    else:
        raise ImageError(f"unknown rootfs format {fmt!r}: choose one of {', '.join(ROOTFS_FORMATS)}")
    size = out.stat().st_size
    if size % DEVICE_ALIGNMENT:
        with out.open("r+b") as fh:
            fh.truncate(size + DEVICE_ALIGNMENT - size % DEVICE_ALIGNMENT)


def build_rootfs_image(kernel: KernelArtifacts, cache_dir: Path, fmt: str, *, force: bool = False,
                       reporter: Reporter | None = None) -> Path:
    """The initrd's tree as a ``fmt`` image, cached by the same inputs plus the format.

    Booting from it needs the modules that reach the device (virtio_pci, nd_pmem/virtio_pmem, erofs)
    loaded first: with Debian's kernel they are modules, so an erofs image boots with the boot initrd
    (:mod:`kata.image.bootinitrd`) as the VM's initrd.

    Raises:
        ImageError: when building the tree or the filesystem fails.
    """
    report = reporter or Reporter()
    inputs = {**build_inputs(kernel, "none"), "rootfs": fmt, "device_alignment": str(DEVICE_ALIGNMENT)}
    key = cache.cache_key(inputs)
    store = cache.BuildCache(cache_dir / "rootfs")
    with store.locked():
        if store.lookup(key) is not None and not force:
            report.note(f"cached: {store.entry(key) / ROOTFS_NAME}")
            return store.entry(key) / ROOTFS_NAME
        started = time.monotonic()
        with store.staging(key) as out, tempfile.TemporaryDirectory(dir=store.root) as work:
            root = Path(work) / "root"
            root.mkdir()
            facts = stage_tree(root, kernel, key, report)
            for name, major, minor, mode in EARLY_DEVICES:  # no devtmpfs on /dev before PID 1 runs
                os.mknod(root / name, stat.S_IFCHR | mode, os.makedev(major, minor))
                os.chmod(root / name, mode)  # mknod's mode is cut by the umask
            with report.step(f"{fmt} image") as step:
                make_filesystem(root, out / ROOTFS_NAME, fmt)
                size = (out / ROOTFS_NAME).stat().st_size
                step.detail = f"{(out / ROOTFS_NAME).stat().st_blocks * 512 / 1e6:.1f} MB used of {size / 1e6:.1f}"
            facts.update(key=key, inputs=inputs, size=size, format=fmt,
                         seconds=round(time.monotonic() - started, 2))
            cache.write_result(out, facts)
    return store.entry(key) / ROOTFS_NAME

"""`kata-runtime image build`: fetch the guest kernel and build (or reuse) the guest initrd."""

from __future__ import annotations

import argparse
from pathlib import Path

from kata.cli.context import CliContext

__all__ = ["add_arguments", "run"]

# Kept literal so that parsing arguments imports nothing from the builder (a unit test checks they
# match kata.image.kernel's).
FLAVOURS = ("minimal", "cloud", "generic")
DEFAULT_FLAVOUR = "minimal"
COMPRESSIONS = ("none", "gzip", "lz4")
ROOTFS_FORMATS = ("erofs", "ext4")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="image_command", required=True, metavar="SUBCOMMAND")
    build = sub.add_parser("build", help="build the guest initrd (and optional rootfs image)",
                           description="Fetch the guest kernel, build the initrd (cached by a hash of its "
                                       "inputs) and link both to the configured default paths.")
    build.add_argument("--flavour", choices=FLAVOURS, default=DEFAULT_FLAVOUR,
                       help="kernel: minimal (pykata's own, built from Debian's linux-source, everything "
                            "built in, fastest boot), or Debian's cloud (no 9p) or generic "
                            "(default: %(default)s)")
    build.add_argument("--force", action="store_true", help="rebuild even when the cache has this build")
    build.add_argument("--compression", choices=COMPRESSIONS, default=None,
                       help="initrd compression (default: the builder's measured fastest)")
    build.add_argument("--rootfs-image", choices=ROOTFS_FORMATS, default=None,
                       help="also write the tree as a filesystem image for virtio-pmem/virtio-blk")
    build.add_argument("--cache-dir", type=Path, default=None, help="default: /var/cache/pykata")
    build.add_argument("--guest-dir", type=Path, default=None,
                       help="where the configured kernel and initrd paths point "
                            "(default: /var/cache/pykata/guest)")
    build.add_argument("--quiet", action="store_true", help="no progress output")


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    del ctx
    from kata.image.build import build_guest_image, guest_dir_for
    from kata.image.initrd import DEFAULT_COMPRESSION
    from kata.image.kernel import DEFAULT_CACHE_DIR
    from kata.image.progress import Reporter, RichReporter

    reporter = Reporter() if args.quiet else RichReporter()
    image = build_guest_image(
        flavour=args.flavour, cache_dir=args.cache_dir or DEFAULT_CACHE_DIR,
        guest_dir=args.guest_dir or guest_dir_for(args.flavour), compression=args.compression or DEFAULT_COMPRESSION,
        force=args.force, rootfs_format=args.rootfs_image, reporter=reporter)
    state = "cached" if image.initrd.cached else "built"
    print(f"kernel {image.kernel.release}: {image.kernel.vmlinux}")
    print(f"initrd {image.initrd.key} ({state}, {image.initrd.facts.get('size', 0)} bytes): "
          f"{image.initrd_link} -> {image.initrd.path}")
    if image.rootfs is not None:
        print(f"rootfs {image.rootfs} -> {image.rootfs.resolve()}")
    if image.boot_initrd is not None:
        print(f"boot initrd {image.boot_initrd} -> {image.boot_initrd.resolve()} (boot the image with "
              f"image = \"{image.rootfs}\", initrd = \"{image.boot_initrd}\")")
    return 0

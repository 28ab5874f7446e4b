"""``python -m kata.image kernel|build``: fetch the guest kernel; build the image (as `image build`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kata.errors import KataError
from kata.image.build import guest_dir_for
from kata.image.initrd import COMPRESSIONS, DEFAULT_COMPRESSION
from kata.image.kernel import DEFAULT_CACHE_DIR, DEFAULT_FLAVOUR, FLAVOURS, fetch_kernel, link_guest_kernel
from kata.image.rootfs import ROOTFS_FORMATS


def _build(args: argparse.Namespace) -> int:
    from kata.image.build import build_guest_image
    from kata.image.progress import RichReporter

    try:
        image = build_guest_image(flavour=args.flavour, cache_dir=args.cache_dir,
                                  guest_dir=args.guest_dir or guest_dir_for(args.flavour),
                                  compression=args.compression, force=args.force,
                                  rootfs_format=args.rootfs_image, reporter=RichReporter())
    except KataError as exc:
        print(f"kata.image: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"initrd {image.initrd.key}: {image.initrd_link} -> {image.initrd.path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kata.image", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    kernel = sub.add_parser("kernel", help="fetch (or build, for minimal) the guest kernel and its vmlinux")
    kernel.add_argument("--flavour", choices=sorted(FLAVOURS), default=DEFAULT_FLAVOUR)
    kernel.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    kernel.add_argument("--guest-dir", type=Path, default=None,
                        help="where the configured kernel path points (default: %(default)s)")
    build = sub.add_parser("build", help="build the guest initrd (as `kata-runtime image build`)")
    build.add_argument("--flavour", choices=sorted(FLAVOURS), default=DEFAULT_FLAVOUR)
    build.add_argument("--force", action="store_true")
    build.add_argument("--compression", choices=COMPRESSIONS, default=DEFAULT_COMPRESSION)
    build.add_argument("--rootfs-image", choices=ROOTFS_FORMATS, default=None)
    build.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    build.add_argument("--guest-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command == "build":
        return _build(args)
    try:
        fetched = fetch_kernel(args.flavour, args.cache_dir)
        link_guest_kernel(fetched, args.guest_dir or guest_dir_for(args.flavour))
    except KataError as exc:
        print(f"kata.image: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"guest kernel {fetched.release} ({fetched.package} {fetched.version}) in {fetched.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m kata.image kernel [--flavour cloud|generic]``: fetch the guest kernel into the cache."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kata.config.schema import GUEST_DIR
from kata.errors import KataError
from kata.image.kernel import DEFAULT_CACHE_DIR, FLAVOURS, fetch_kernel, link_guest_kernel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kata.image", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    kernel = sub.add_parser("kernel", help="fetch Debian's guest kernel and extract its vmlinux")
    kernel.add_argument("--flavour", choices=sorted(FLAVOURS), default="cloud")
    kernel.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    kernel.add_argument("--guest-dir", type=Path, default=Path(GUEST_DIR),
                        help="where the configured kernel path points (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        fetched = fetch_kernel(args.flavour, args.cache_dir)
        link_guest_kernel(fetched, args.guest_dir)
    except KataError as exc:
        print(f"kata.image: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"guest kernel {fetched.release} ({fetched.package} {fetched.version}) in {fetched.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`kata-runtime run [-d] [create's flags] ID`: create and start; without --detach stay attached, relay its
stdio, delete the container when it exits and exit with its status."""

from __future__ import annotations

import argparse
import contextlib

from kata.cli.context import CliContext
from kata.cli.create import add_create_arguments, warn_ignored

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_create_arguments(parser)
    parser.add_argument("-d", "--detach", action="store_true", help="detach from the container's process")
    parser.add_argument("--keep", action="store_true", help="do not delete the container after it exits")


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    from kata.errors import KataError

    warn_ignored(args)
    runtime = ctx.runtime
    launch, record = runtime.create(args.container_id, args.bundle, pid_file=args.pid_file,
                                    console_socket=args.console_socket, detach=args.detach)
    try:
        runtime.start(args.container_id)
    except BaseException:
        launch.close()
        with contextlib.suppress(KataError):
            runtime.delete(args.container_id, force=True)
        raise
    if args.detach:
        return 0
    status = launch.run_here(str(runtime.paths(record.id).socket), record.id, "")
    if not args.keep:
        runtime.delete(args.container_id, force=True)
    return status

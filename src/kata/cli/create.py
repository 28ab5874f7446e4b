"""`kata-runtime create [--bundle DIR] [--pid-file F] [--console-socket S] ID`: boot the container's VM and
create it (not started); a process proxy stays behind and its pid goes to --pid-file."""

from __future__ import annotations

import argparse

from kata.cli.context import CliContext

__all__ = ["add_arguments", "add_create_arguments", "run"]


def add_create_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags create and run share (runc's)."""
    parser.add_argument("-b", "--bundle", default=".", help="path to the bundle (default: the current directory)")
    parser.add_argument("--console-socket", metavar="PATH",
                        help="unix socket that receives the master of the container's pty (SCM_RIGHTS)")
    parser.add_argument("--pid-file", metavar="PATH", help="write the process proxy's pid here")
    parser.add_argument("--no-pivot", action="store_true", help="accepted (the guest's runtime decides)")
    parser.add_argument("--no-new-keyring", action="store_true", help="accepted (ignored)")
    parser.add_argument("--preserve-fds", type=int, default=0, metavar="N",
                        help="accepted; extra fds cannot reach a process in a VM")
    parser.add_argument("container_id", metavar="ID", help="the container id")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_create_arguments(parser)


def warn_ignored(args: argparse.Namespace) -> None:
    """Log the flags we take but cannot honour."""
    if args.preserve_fds:
        import logging
        logging.getLogger("kata.cli").warning("--preserve-fds %d: extra fds cannot be passed into the VM",
                                              args.preserve_fds)


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    warn_ignored(args)
    ctx.runtime.create(args.container_id, args.bundle, pid_file=args.pid_file, console_socket=args.console_socket)
    return 0

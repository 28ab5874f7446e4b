"""`kata-runtime fork-server`: run the sandbox daemons' fork server in the foreground (SIGTERM stops it)."""

from __future__ import annotations

import argparse

from kata.cli.context import CliContext

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", metavar="PATH",
                        help="listen here instead of $KATA_ROOT/fork-server.sock (default /run/kata/...); "
                             "containerd-shim-kata-v2 and kata-runtime look only there")


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; 0. Used when ``[runtime] shim_fork_server`` is on (docs/shim.md)."""
    from kata.log import configure
    from kata.shim.forkserver import serve

    if not ctx.log:
        configure(debug=ctx.debug, log_format=ctx.log_format)
    return serve(args.socket)

"""`kata-runtime exec [flags] ID [COMMAND ARGS...]`: run another process in a running container (from
`-p process.json` or COMMAND with the container's own process settings); `-d` leaves a process proxy
whose pid goes to --pid-file, otherwise exit with the process's status."""

from __future__ import annotations

import argparse

from kata.cli.context import CliContext

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--console-socket", metavar="PATH",
                        help="unix socket that receives the master of the process's pty (SCM_RIGHTS)")
    parser.add_argument("--cwd", default="", help="current working directory in the container")
    parser.add_argument("-e", "--env", action="append", default=[], help="set an environment variable (K=V)")
    parser.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    parser.add_argument("-u", "--user", default="", help="UID (format: <uid>[:<gid>])")
    parser.add_argument("-g", "--additional-gids", action="append", type=int, default=[],
                        help="additional gids")
    parser.add_argument("-p", "--process", metavar="FILE", help="path to a process.json")
    parser.add_argument("-d", "--detach", action="store_true", help="detach from the process")
    parser.add_argument("--pid-file", metavar="PATH", help="write the process proxy's pid here")
    parser.add_argument("--process-label", default="", help="SELinux label of the process")
    parser.add_argument("--apparmor", default="", help="AppArmor profile of the process")
    parser.add_argument("--no-new-privs", action="store_true", default=None, help="set no_new_privileges")
    parser.add_argument("-c", "--cap", action="append", default=[], help="add a capability")
    parser.add_argument("--preserve-fds", type=int, default=0, metavar="N", help="accepted (ignored)")
    parser.add_argument("--ignore-paused", action="store_true", help="accepted (a paused container refuses)")
    parser.add_argument("--cgroup", action="append", default=[], help="accepted (ignored)")
    parser.add_argument("container_id", metavar="ID", help="the container id")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")


def _process(ctx: CliContext, args: argparse.Namespace) -> dict[str, object]:
    from kata.errors import UsageError
    from kata.oci_cli.process import exec_process, read_process_file

    if args.process:
        return read_process_file(args.process)
    if not args.command:
        raise UsageError("exec: a command is required (or --process)")
    record = ctx.runtime.record(args.container_id)
    import json
    import os
    with open(os.path.join(record.bundle, "config.json"), encoding="utf-8") as fh:
        base = json.load(fh).get("process") or {}
    return exec_process(base, args.command, cwd=args.cwd, env=args.env, tty=args.tty, user=args.user,
                        additional_gids=args.additional_gids, caps=args.cap, no_new_privs=args.no_new_privs,
                        apparmor=args.apparmor, process_label=args.process_label)


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    process = _process(ctx, args)
    return ctx.runtime.exec(args.container_id, process, pid_file=args.pid_file, console_socket=args.console_socket,
                            detach=args.detach)

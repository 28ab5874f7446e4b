"""kata-runtime entry point: global options, verb dispatch, one-line errors."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from kata.cli.context import DEFAULT_ROOT, CliContext
from kata.errors import EXIT_ERROR, KataError, UsageError

__all__ = ["main"]

PROG = "kata-runtime"
# verb -> (module under kata.cli, help). Modules are imported only when their verb runs.
VERBS = {
    "check": ("check", "check that this host can run pykata sandboxes"),
    "env": ("env", "show the effective configuration, paths, versions and host facts"),
    "image": ("image", "build the guest kernel and image"),
    "timeline": ("timeline", "show a sandbox's startup timeline"),
    "version": ("version", "show version information"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: runc's global options, then a verb."""
    parser = _Parser(prog=PROG, description="pykata: OCI runtime that runs containers in VMs")
    parser.add_argument("--root", default=os.environ.get("KATA_ROOT", DEFAULT_ROOT),
                        help="state directory (default: %(default)s)")
    parser.add_argument("--log", help="write log records to this file (default: stderr)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--debug", action="store_true", help="log debug records")
    parser.add_argument("--systemd-cgroup", action="store_true", help="accepted for runc compatibility")
    parser.add_argument("--config", "--kata-config", dest="config", metavar="PATH",
                        help="configuration file (overrides the search list)")
    parser.add_argument("--show-default-config-paths", action="store_true",
                        help="print the configuration search list and exit")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for verb, (module, text) in VERBS.items():
        sub = verbs.add_parser(verb, help=text, description=text)
        importlib.import_module(f"kata.cli.{module}").add_arguments(sub)
    return parser


def _report(error: BaseException, args: argparse.Namespace | None) -> None:
    """One line on stderr; also a log record when a log file or JSON format was asked for."""
    message = str(error) or type(error).__name__
    if args is not None and args.log:
        logging.getLogger("kata.cli").error(message)
    if args is not None and args.log_format == "json" and not args.log:
        print(json.dumps({"level": "error", "msg": message}), file=sys.stderr)
    else:
        print(f"{PROG}: error: {message}", file=sys.stderr)


def _run(argv: Sequence[str] | None) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        from kata.log import configure
        configure(debug=args.debug, log_file=args.log, log_format=args.log_format)
        ctx = CliContext(root=args.root, config_path=args.config, debug=args.debug, log=args.log,
                         log_format=args.log_format)
        if args.show_default_config_paths:
            from kata.cli.paths import show_default_config_paths
            return show_default_config_paths(ctx)
        if args.verb is None:
            raise UsageError("a command is required (see --help)")
        module = importlib.import_module(f"kata.cli.{VERBS[args.verb][0]}")
        code: int = module.run(ctx, args)
        return code
    except KataError as exc:
        _report(exc, args)
        return exc.exit_code
    except OSError as exc:
        _report(exc, args)
        return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Run kata-runtime with ``argv`` (default: sys.argv[1:]) and return its exit code."""
    return _run(argv)


if __name__ == "__main__":
    sys.exit(main())

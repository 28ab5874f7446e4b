"""kata-runtime entry point: global options, verb dispatch, one-line errors."""

from __future__ import annotations

import argparse
import importlib
import json
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
    "create": ("create", "create a container (its VM boots; the process does not start)"),
    "start": ("start", "start a created container's process"),
    "run": ("run", "create and start a container"),
    "state": ("state", "print a container's OCI state as JSON"),
    "kill": ("kill", "send a signal to a container's process"),
    "delete": ("delete", "delete a container, its VM and its daemon"),
    "exec": ("exec", "run another process in a container"),
    "ps": ("ps", "show a container's host processes"),
    "list": ("list", "list the containers under --root"),
    "pause": ("pause", "freeze a container's processes"),
    "resume": ("resume", "thaw a paused container"),
    "events": ("events", "print a container's resource usage"),
    "update": ("update", "change a container's cgroup limits"),
    "spec": ("spec", "write a default config.json"),
    "features": ("features", "print the features this runtime supports (JSON)"),
    "check": ("check", "check that this host can run pykata sandboxes"),
    "env": ("env", "show the effective configuration, paths, versions and host facts"),
    "image": ("image", "build the guest kernel and image"),
    "factory": ("factory", "make, show or remove the VM template (and show KSM)"),
    "timeline": ("timeline", "show a sandbox's startup timeline"),
    "fork-server": ("fork_server", "run the fork server that starts sandbox daemons (shim_fork_server)"),
    "add-iface": ("network", "hotplug a link of a sandbox's network namespace into its VM"),
    "del-iface": ("network", "unplug an interface add-iface added"),
    "list-ifaces": ("network", "print a sandbox's guest interfaces (JSON)"),
    "list-routes": ("network", "print a sandbox's guest routes (JSON)"),
    "iptables": ("iptables", "get or set the iptables rules of a sandbox's guest"),
    "version": ("version", "show version information"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


# Global options that take a value (so the word after them is not the verb).
_VALUED = frozenset({"--root", "--log", "--log-format", "--config", "--kata-config", "--criu", "--rootless"})


def selected_verb(argv: Sequence[str]) -> str | None:
    """The verb ``argv`` names (the first word that is not a global option or its value), if any."""
    words = iter(argv)
    for word in words:
        if word in VERBS:
            return word
        if word in _VALUED:
            next(words, None)
        elif not word.startswith("-"):
            return None
    return None


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The argument parser: runc's global options, then a verb. Engines run a verb per call, so only the
    arguments of ``verb`` are defined when it is given (every verb's otherwise)."""
    parser = _Parser(prog=PROG, description="pykata: OCI runtime that runs containers in VMs", allow_abbrev=False)
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
    parser.add_argument("-v", "--version", action="store_true", help="print the version (runc's format) and exit")
    parser.add_argument("--criu", help="accepted for runc compatibility (no checkpoint/restore)")
    parser.add_argument("--rootless", default="auto", help="accepted for runc compatibility")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for name, (module, text) in VERBS.items():
        sub = verbs.add_parser(name, help=text, description=text, allow_abbrev=False)
        if verb in (None, name):
            importlib.import_module(f"kata.cli.{module}").add_arguments(sub)
    return parser


def _report(error: BaseException, args: argparse.Namespace | None) -> None:
    """One line on stderr (JSON with --log-format json, as runc's logrus); also a log record in --log."""
    message = str(error) or type(error).__name__
    if args is not None and args.log:
        import logging
        logging.getLogger("kata.cli").error(message)
    if args is not None and args.log_format == "json" and not args.log:
        import time
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        print(json.dumps({"level": "error", "msg": message, "time": stamp}), file=sys.stderr)
    else:
        print(f"{PROG}: error: {message}", file=sys.stderr)


def _print_version() -> int:
    """``--version`` as runc prints it (engines parse the first line and ``spec:``)."""
    import platform

    from kata import __version__
    from kata.cli.version import OCI_VERSION
    print(f"{PROG} version {__version__}\ncommit: none\nspec: {OCI_VERSION}\npython: {platform.python_version()}")
    return 0


def _run(argv: Sequence[str] | None) -> int:
    args = None
    try:
        words = sys.argv[1:] if argv is None else list(argv)
        args = build_parser(selected_verb(words)).parse_args(words)
        if args.log or args.debug or args.log_format != "text":  # else warnings reach stderr unformatted
            from kata.log import configure
            configure(debug=args.debug, log_file=args.log, log_format=args.log_format)
        ctx = CliContext(root=args.root, config_path=args.config, debug=args.debug, log=args.log,
                         log_format=args.log_format)
        if args.version:
            return _print_version()
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
    except BrokenPipeError:  # `kata-runtime list | head`: stop quietly, as a process killed by SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    except OSError as exc:
        _report(exc, args)
        return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Run kata-runtime with ``argv`` (default: sys.argv[1:]) and return its exit code."""
    return _run(argv)


if __name__ == "__main__":
    sys.exit(main())

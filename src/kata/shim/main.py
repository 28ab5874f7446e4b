"""containerd-shim-kata-v2 entry point: Go-style flags, then ``start``, ``delete`` or the daemon."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from kata.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE, KataError, UsageError

__all__ = ["PROG", "ShimFlags", "main", "parse_flags"]

PROG = "containerd-shim-kata-v2"
ACTIONS = ("start", "delete", "")
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


@dataclass(frozen=True)
class ShimFlags:
    """The shim's command line, as containerd's pkg shim declares it (plus ``-config``, ours)."""

    namespace: str = ""
    id: str = ""
    address: str = ""  # containerd's gRPC address (part of the socket address hash)
    publish_binary: str = "containerd"
    bundle: str = ""
    socket: str = ""
    config: str = ""  # ours: the configuration file `start` read from the runtime options
    debug: bool = False
    v: bool = False
    action: str = ""


_FLAGS = {f.name.replace("_", "-"): f for f in fields(ShimFlags) if f.name != "action"}


def _bool(name: str, raw: str) -> bool:
    if raw in _TRUE or raw in _FALSE:
        return raw in _TRUE
    raise UsageError(f"invalid boolean value {raw!r} for -{name}")


def parse_flags(argv: Sequence[str]) -> ShimFlags:
    """Parse like Go's ``flag`` package: ``-name value``, ``--name=value``, bare booleans, and the
    first non-flag argument is the action.

    Raises:
        UsageError: an unknown flag, a missing value, or an unknown action.
    """
    values: dict[str, Any] = {}
    args = list(argv)
    while args and args[0].startswith("-") and args[0] != "-":
        arg = args.pop(0)
        if arg == "--":
            break
        name, has_value, raw = arg.lstrip("-").partition("=")
        if not name or arg.startswith("---"):
            raise UsageError(f"bad flag syntax: {arg}")
        spec = _FLAGS.get(name)
        if spec is None:
            raise UsageError(f"flag provided but not defined: -{name}")
        if spec.type in (bool, "bool"):
            values[spec.name] = _bool(name, raw) if has_value else True
            continue
        if not has_value:
            if not args:
                raise UsageError(f"flag needs an argument: -{name}")
            raw = args.pop(0)
        values[spec.name] = raw
    action = args[0] if args else ""
    if action not in ACTIONS:
        raise UsageError(f"unknown action {action!r} (expected start, delete, or none for the daemon)")
    return ShimFlags(**values, action=action)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the shim; the exit code (2 for a bad command line)."""
    try:
        flags = parse_flags(sys.argv[1:] if argv is None else argv)
        if flags.v:
            from kata import __version__
            print(f"{PROG}:\n  Version:  {__version__}")
            return EXIT_OK
        if not flags.namespace:
            raise UsageError("shim namespace cannot be empty")
        if flags.action == "start":
            from kata.shim.bootstrap import start
            return start(flags)
        if flags.action == "delete":
            from kata.shim.bootstrap import delete
            return delete(flags)
        from kata.shim.daemon import run
        return run(flags)
    except KataError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR

"""kata-runtime iptables get|set --sandbox-id ID [--v6] [FILE] (Kata 2.x): the guest's iptables through the
sandbox's shim (its /iptables and /ip6tables endpoints)."""

from __future__ import annotations

import argparse
import sys
from http import HTTPStatus

from kata.cli.context import CliContext
from kata.errors import KataError

__all__ = ["add_arguments", "run"]

TIMEOUT = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``iptables get --sandbox-id ID [--v6]``, ``iptables set --sandbox-id ID [--v6] FILE``."""
    actions = parser.add_subparsers(dest="iptables_action", metavar="ACTION", required=True)
    get = actions.add_parser("get", help="print the guest's iptables rules (iptables-save format)",
                             allow_abbrev=False)
    put = actions.add_parser("set", help="replace the guest's iptables rules by FILE (iptables-restore input)",
                             allow_abbrev=False)
    for sub in (get, put):
        sub.add_argument("--sandbox-id", required=True, help="the sandbox (pod) id")
        sub.add_argument("--v6", action="store_true", help="ip6tables instead of iptables")
    put.add_argument("file", metavar="FILE", help="the rules ('-': standard input)")


def _rules(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as source:
            return source.read()
    except OSError as exc:
        raise KataError(f"iptables file {path}: {exc.strerror or exc}") from exc


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    """get: print the rules; set: send FILE.

    Raises:
        UsageError: a bad sandbox id.
        KataError: no shim serves the sandbox, the file cannot be read, the guest has no iptables
            (pykata's guest image carries none) or refused the rules.
    """
    from kata.cli.network import ShimRefusedError, check_sandbox_id, missing_sandbox, shim_call

    sandbox_id = check_sandbox_id(args.sandbox_id)
    what = f"iptables {args.iptables_action} {sandbox_id}"
    target = "/ip6tables" if args.v6 else "/iptables"
    data = _rules(args.file) if args.iptables_action == "set" else b""
    try:
        body = shim_call(ctx, sandbox_id, "PUT" if args.iptables_action == "set" else "GET", target, data,
                         timeout=TIMEOUT)
    except ShimRefusedError as exc:
        if exc.status == HTTPStatus.NOT_IMPLEMENTED:
            raise KataError(f"{what}: not supported: the guest has no {target[1:]} ({exc})") from exc
        raise KataError(f"{what}: {exc}") from exc
    if body is None:
        missing = missing_sandbox(ctx, sandbox_id)
        raise KataError(f"{what}: {missing or 'no shim serves this sandbox (only a shim has the iptables verbs)'}")
    sys.stdout.buffer.write(body)
    sys.stdout.flush()
    return 0

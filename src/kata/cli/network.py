"""kata-runtime add-iface / del-iface / list-ifaces / list-routes (Kata 1.x's kata-network verbs), asked of
the sandbox's shim over its shim-monitor socket; the list verbs load a sandbox no shim serves."""

from __future__ import annotations

import argparse
import sys

from kata.cli.context import CliContext
from kata.errors import KataError, UsageError
from kata.ids import ID_RULE, valid_id

__all__ = ["HOTPLUG_VERBS", "ShimRefusedError", "add_arguments", "check_sandbox_id", "missing_sandbox", "run",
           "shim_call"]

HOTPLUG_VERBS = ("add-iface", "del-iface")
LIST_TIMEOUT = 30.0
HOTPLUG_TIMEOUT = 180.0  # a NIC hotplug: QMP, then the guest waits for the device (slow under TCG)


class ShimRefusedError(KataError):
    """The shim answered an HTTP error ``status``; the message is its text."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``add-iface|del-iface <sandbox-id> <ifname>``, ``list-ifaces|list-routes <sandbox-id>`` (one module
    serves the four verbs: the verb is the last word of the subparser's prog)."""
    verb = parser.prog.rpartition(" ")[2]
    parser.add_argument("sandbox_id", metavar="SANDBOX-ID", help="the sandbox (pod) id")
    if verb == "add-iface":
        parser.add_argument("ifname", metavar="IFNAME",
                            help="a link of the sandbox's network namespace (e.g. the veth of a second CNI network)")
    elif verb == "del-iface":
        parser.add_argument("ifname", metavar="IFNAME", help="an interface add-iface added")


def check_sandbox_id(sandbox_id: str) -> str:
    """``sandbox_id`` when it can name a sandbox.

    Raises:
        UsageError: it cannot.
    """
    if not valid_id(sandbox_id):
        raise UsageError(f"bad sandbox id {sandbox_id!r}: {ID_RULE}")
    return sandbox_id


def shim_call(ctx: CliContext, sandbox_id: str, method: str, target: str, body: bytes = b"", *,
              timeout: float) -> bytes | None:
    """The body of the shim's 2xx answer; None when no shim serves the sandbox.

    Raises:
        ShimRefusedError: the shim answered an error (its text is the message).
        KataError: the shim did not answer in time.
    """
    from kata.shim.monitor_client import call, monitor_socket

    try:
        answer = call(monitor_socket(ctx.root, sandbox_id), method, target, body, timeout=timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    if not answer.ok:
        raise ShimRefusedError(answer.text, status=answer.status)
    return answer.body


def _request(args: argparse.Namespace) -> tuple[str, str, float]:
    from urllib.parse import quote

    if args.verb == "list-ifaces":
        return "GET", "/network/interfaces", LIST_TIMEOUT
    if args.verb == "list-routes":
        return "GET", "/network/routes", LIST_TIMEOUT
    method = "PUT" if args.verb == "add-iface" else "DELETE"
    return method, f"/network/interfaces/{quote(args.ifname, safe='')}", HOTPLUG_TIMEOUT


def run(ctx: CliContext, args: argparse.Namespace) -> int:
    """Print the shim's JSON answer (nothing for del-iface).

    Raises:
        UsageError: a bad sandbox id.
        KataError: the shim refused (no such link, not hotplugged, ...); no such sandbox; hotplug of a
            sandbox no shim serves.
    """
    sandbox_id = check_sandbox_id(args.sandbox_id)
    method, target, timeout = _request(args)
    try:
        body = shim_call(ctx, sandbox_id, method, target, timeout=timeout)
        if body is None:
            body = _without_shim(ctx, sandbox_id, args.verb)
    except KataError as exc:
        raise KataError(f"{args.verb} {sandbox_id}: {exc}") from exc
    sys.stdout.buffer.write(body)
    sys.stdout.flush()
    return 0


def missing_sandbox(ctx: CliContext, sandbox_id: str) -> KataError | None:
    """The error to raise when the sandbox has no state under --root (else None)."""
    import os

    if os.path.exists(os.path.join(ctx.root, sandbox_id, "state.json")):
        return None
    return KataError(f"sandbox does not exist under {ctx.root}")


def _without_shim(ctx: CliContext, sandbox_id: str, verb: str) -> bytes:
    """A sandbox no shim serves (made by the library, detached): the list verbs load it from its state."""
    from kata.errors import StateError

    if missing := missing_sandbox(ctx, sandbox_id):
        raise missing
    if verb in HOTPLUG_VERBS:
        raise StateError("no shim serves this sandbox: only the process that started its VM can hotplug "
                         "interfaces", state="detached")
    import asyncio
    return asyncio.run(_list_loaded(ctx.root, sandbox_id, verb))


async def _list_loaded(root: str, sandbox_id: str, verb: str) -> bytes:
    from kata.sandbox import AsyncSandbox
    from kata.shim.network_api import interfaces_body, routes_body

    sandbox = await AsyncSandbox.load(sandbox_id, root=root)
    try:
        if verb == "list-ifaces":
            return interfaces_body(await sandbox.list_interfaces())
        return routes_body(await sandbox.list_routes())
    finally:
        if sandbox.agent_available():
            await sandbox.detach()  # hand it back: closes our agent connection, the VM runs on

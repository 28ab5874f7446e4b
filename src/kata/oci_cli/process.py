"""The process ``exec`` runs: a process.json as given, or the container's own process with runc's
flags applied (runc's getProcess; pure)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from kata.errors import UsageError
from kata.oci_cli.errors import OciCliError
from kata.oci_cli.jsonfile import load_object

__all__ = ["CAPABILITY_SETS", "exec_process", "parse_user", "read_process_file", "validate_process"]

CAPABILITY_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")


def read_process_file(path: str) -> dict[str, Any]:
    """A process.json (``exec -p``), validated.

    Raises:
        OciCliError: it cannot be read, is not JSON, or is not a usable process.
    """
    process = load_object(path, what="process")
    return validate_process(process)


def validate_process(process: dict[str, Any]) -> dict[str, Any]:
    """``process`` when it has args and an absolute cwd (runc's validateProcessSpec).

    Raises:
        OciCliError: it has not.
    """
    cwd = process.get("cwd")
    if not cwd:
        raise OciCliError("Cwd property must not be empty")
    if not str(cwd).startswith("/"):
        raise OciCliError("Cwd must be an absolute path")
    if not process.get("args"):
        raise OciCliError("args must not be empty")
    return process


def parse_user(text: str) -> tuple[int, int | None]:
    """``uid[:gid]``, numeric (runc's --user).

    Raises:
        UsageError: not numbers.
    """
    uid, colon, gid = text.partition(":")
    try:
        return int(uid), int(gid) if colon else None
    except ValueError:
        raise UsageError(f"--user {text!r}: expected <uid>[:<gid>] as numbers") from None


def exec_process(base: dict[str, Any], args: Sequence[str], *, cwd: str = "", env: Sequence[str] = (),
                 tty: bool = False, user: str = "", additional_gids: Sequence[int] = (), caps: Sequence[str] = (),
                 no_new_privs: bool | None = None, apparmor: str = "", process_label: str = "") -> dict[str, Any]:
    """The container's process ``base`` (from its config.json) running ``args`` with the flags applied.

    Raises:
        OciCliError: the result has no args or no absolute cwd.
        UsageError: a malformed --user.
    """
    process = copy.deepcopy(base)
    process["args"] = list(args)
    process.pop("commandLine", None)
    if cwd:
        process["cwd"] = cwd
    if apparmor:
        process["apparmorProfile"] = apparmor
    if process_label:
        process["selinuxLabel"] = process_label
    if caps:
        sets = process.setdefault("capabilities", {})
        for name in CAPABILITY_SETS:
            sets[name] = [*sets.get(name, []), *caps]
    process["env"] = [*process.get("env", []), *env]
    process["terminal"] = tty
    process.pop("consoleSize", None)
    if no_new_privs is not None:
        process["noNewPrivileges"] = no_new_privs
    identity = process.setdefault("user", {"uid": 0, "gid": 0})
    if user:
        uid, gid = parse_user(user)
        identity["uid"] = uid
        if gid is not None:
            identity["gid"] = gid
    if additional_gids:
        identity["additionalGids"] = [*identity.get("additionalGids", []), *additional_gids]
    return validate_process(process)

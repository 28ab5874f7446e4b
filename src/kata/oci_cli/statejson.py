"""What ``state``, ``list`` and ``ps`` print, in runc's shapes (pure)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

from kata.oci_cli.layout import ContainerRecord

__all__ = ["OCI_VERSION", "STATUSES", "dumps", "list_table", "oci_state", "owner_of", "ps_table"]

OCI_VERSION = "1.1.0"  # kata.oci.model.OCI_VERSION, without importing the model
STATUSES = ("creating", "created", "running", "paused", "stopped")


def oci_state(record: ContainerRecord, status: str, pid: int) -> dict[str, object]:
    """runc's containerState: the runtime-spec state plus rootfs, created and owner (pid 0 once stopped)."""
    state: dict[str, object] = {"ociVersion": OCI_VERSION, "id": record.id,
                                "pid": 0 if status == "stopped" else pid, "status": status,
                                "bundle": record.bundle, "rootfs": record.rootfs, "created": record.created}
    if record.annotations:
        state["annotations"] = dict(record.annotations)
    state["owner"] = record.owner
    return state


def list_table(states: Iterable[dict[str, object]]) -> str:
    """``runc list``'s table: ID PID STATUS BUNDLE CREATED OWNER (Go tabwriter: min width 12, padding 3)."""
    rows: list[tuple[str, ...]] = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
    rows += [tuple(str(s[key]) for key in ("id", "pid", "status", "bundle", "created", "owner")) for s in states]
    return _columns(rows)


def ps_table(header: str, lines: Sequence[str], pids: Iterable[int]) -> str:
    """``runc ps``: the header of ``ps`` output and its lines whose PID column is one of ``pids``."""
    columns = header.split()
    where = columns.index("PID") if "PID" in columns else 1
    wanted = {str(pid) for pid in pids}
    kept = [line for line in lines if len(line.split()) > where and line.split()[where] in wanted]
    return "\n".join([header, *kept])


def _columns(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(12, *(len(row[i]) + 3 for row in rows)) for i in range(len(rows[0]))]
    return "\n".join("".join(cell.ljust(width) if i < len(row) - 1 else cell
                             for i, (cell, width) in enumerate(zip(row, widths, strict=True))) for row in rows)


def dumps(value: object) -> str:
    """JSON as runc prints state (two-space indent)."""
    return json.dumps(value, indent=2)


def owner_of(path: str) -> str:
    """The user name owning ``path`` (runc's list OWNER), its uid when it has no name."""
    try:
        uid = os.stat(path).st_uid
    except OSError:
        return ""
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)

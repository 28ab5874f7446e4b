"""Exits as the shim API carries them (a Timestamp, a DeleteResponse), kept light for the ``delete`` verb:
containerd runs it after every shim disconnect and ``ctr run --rm`` waits for it."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from kata.protocols.pb import shim_task_pb2

__all__ = ["delete_response", "timestamp"]


def timestamp(at: float | None) -> timestamp_pb2.Timestamp:
    """A Timestamp of seconds since the epoch (the epoch itself for None)."""
    stamp = timestamp_pb2.Timestamp()
    if at is not None:
        stamp.FromNanoseconds(int(at * 1e9))
    return stamp


def delete_response(pid: int, status: int, at: float) -> shim_task_pb2.DeleteResponse:
    """Delete's answer: the process's pid, exit status and when it exited."""
    return shim_task_pb2.DeleteResponse(pid=pid, exit_status=status, exited_at=timestamp(at))

"""Events a sans-I/O ttRPC connection returns from the bytes it was fed."""

from __future__ import annotations

from typing import NamedTuple

from kata.errors import KataError, ProtocolError
from kata.ttrpc.wire import Request

__all__ = [
    "ClientEvent",
    "ProtocolViolation",
    "RequestReceived",
    "ResponseReceived",
    "ServerEvent",
    "SessionRestarted",
    "StreamFailed",
]


class RequestReceived(NamedTuple):
    """Server side: a well-formed request opened ``stream_id``; answer it exactly once."""

    stream_id: int
    request: Request


class ResponseReceived(NamedTuple):
    """Client side: the call on ``stream_id`` completed with this status and payload."""

    stream_id: int
    code: int
    message: str
    payload: bytes


class StreamFailed(NamedTuple):
    """The stream cannot complete normally because of ``error``.

    Server side: answer ``stream_id`` with the status for ``error``
    (:func:`kata.ttrpc.status.status_for_exception`). Client side: the pending call
    on ``stream_id`` fails with ``error``.
    """

    stream_id: int
    error: KataError


class ProtocolViolation(NamedTuple):
    """The peer broke the protocol in a way that needs no answer; report it and go on."""

    stream_id: int
    error: ProtocolError


class SessionRestarted(NamedTuple):
    """Server side, restartable streams only: a new client started over at stream id 1.

    A virtio-serial port stays open while host processes come and go; under TCG the guest can miss
    the hang-up between two of them. The calls of the previous session are orphaned: their answers
    must not reach the new client.
    """

    stream_id: int


ServerEvent = RequestReceived | StreamFailed | ProtocolViolation | SessionRestarted
ClientEvent = ResponseReceived | StreamFailed | ProtocolViolation

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


ServerEvent = RequestReceived | StreamFailed | ProtocolViolation
ClientEvent = ResponseReceived | StreamFailed | ProtocolViolation

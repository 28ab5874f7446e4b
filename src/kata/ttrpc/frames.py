"""ttRPC frame codec: the 10-byte header and an incremental decoder that never buffers oversized payloads."""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag
from typing import NamedTuple

from kata.ttrpc.status import ResourceExhaustedError

__all__ = [
    "HEADER_SIZE",
    "MAX_MESSAGE_SIZE",
    "MAX_STREAM_ID",
    "Flags",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "OversizedFrame",
    "encode_frame",
    "encode_header",
    "oversized_message",
]

HEADER_SIZE = 10
MAX_MESSAGE_SIZE = 4 << 20
MAX_STREAM_ID = 0xFFFFFFFF

# length (payload only), stream id, type, flags; all big-endian.
_HEADER = struct.Struct(">IIBB")


class FrameType(IntEnum):
    """The frame types of ttRPC 1.2."""

    REQUEST = 1
    RESPONSE = 2
    DATA = 3


class Flags(IntFlag):
    """Frame flags; their meaning depends on the frame type."""

    NONE = 0
    REMOTE_CLOSED = 1
    REMOTE_OPEN = 2
    NO_DATA = 4


class Frame(NamedTuple):
    """One complete frame; ``type`` and ``flags`` are raw ints (unknown types are possible)."""

    stream_id: int
    type: int
    flags: int
    payload: bytes


class OversizedFrame(NamedTuple):
    """A frame whose declared payload exceeds the limit; its payload is discarded unread."""

    stream_id: int
    type: int
    flags: int
    length: int


def oversized_message(length: int, limit: int) -> str:
    """The message of the RESOURCE_EXHAUSTED status for a message of ``length`` bytes."""
    return f"message length {length} exceeds maximum message size of {limit}"


def encode_header(length: int, stream_id: int, frame_type: int, flags: int) -> bytes:
    """The 10 header bytes of a frame.

    Raises:
        ValueError: a field does not fit its wire width.
    """
    try:
        return _HEADER.pack(length, stream_id, frame_type, flags)
    except struct.error as exc:
        raise ValueError(f"frame header out of range: {exc}") from exc


def encode_frame(
    stream_id: int, frame_type: int, flags: int, payload: bytes, *, limit: int = MAX_MESSAGE_SIZE
) -> bytes:
    """A whole frame: header followed by ``payload``.

    Raises:
        ResourceExhaustedError: ``payload`` is longer than ``limit``.
        ValueError: a header field does not fit its wire width.
    """
    if len(payload) > limit:
        raise ResourceExhaustedError(oversized_message(len(payload), limit))
    return encode_header(len(payload), stream_id, frame_type, flags) + payload


class FrameDecoder:
    """Turns a byte stream, fed in chunks of any size, into frames.

    A header announcing more than ``limit`` bytes yields an :class:`OversizedFrame`
    at once; the announced payload is then skipped as it arrives, never buffered.
    """

    __slots__ = ("_buffer", "_limit", "_skip")

    def __init__(self, limit: int = MAX_MESSAGE_SIZE) -> None:
        self._buffer = bytearray()
        self._limit = limit
        self._skip = 0

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buffer)

    @property
    def skipping(self) -> int:
        """Bytes of an oversized payload still to be discarded."""
        return self._skip

    def feed(self, data: bytes) -> list[Frame | OversizedFrame]:
        """Consume ``data`` and return the frames it completes, in order; never raises."""
        if self._skip:
            skipped = min(self._skip, len(data))
            self._skip -= skipped
            data = data[skipped:]
        if self._buffer:
            self._buffer += data
            view: bytes | bytearray = self._buffer
        else:
            view = data  # common case: parse the chunk in place, no copy
        frames: list[Frame | OversizedFrame] = []
        end = len(view)
        pos = 0
        unpack = _HEADER.unpack_from
        while end - pos >= HEADER_SIZE:
            length, stream_id, frame_type, flags = unpack(view, pos)
            start = pos + HEADER_SIZE
            if length > self._limit:
                frames.append(OversizedFrame(stream_id, frame_type, flags, length))
                if end - start >= length:
                    pos = start + length
                    continue
                self._skip = length - (end - start)
                pos = end
                break
            if end - start < length:
                break
            pos = start + length
            frames.append(Frame(stream_id, frame_type, flags, bytes(view[start:pos])))
        if view is self._buffer:
            del self._buffer[:pos]
        elif pos < end:
            self._buffer += view[pos:]
        return frames

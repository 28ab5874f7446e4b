"""The ttRPC envelope (Request, Response, google.rpc.Status) in protobuf's wire format, by hand.

Routing a call needs only the envelope, and protobuf's runtime takes about 0.2 s to import in a TCG
guest: with this module the guest agent answers its first call before protobuf is loaded. The
format is ttrpc_pb2's, byte for byte: fields written in number order, proto3 defaults left out;
decoding follows proto3 (the last value of a field wins, unknown fields and fields of another wire
type are skipped, strings must be UTF-8) and raises protobuf's DecodeError where upb does.
``fields``, ``text``, ``length_field`` and ``varint_field`` serve other small hand-coded messages.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "LENGTH",
    "VARINT",
    "KeyValue",
    "Request",
    "decode_response",
    "encode_request",
    "encode_response",
    "fields",
    "length_field",
    "text",
    "varint_field",
]

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = range(6)
_MASK64 = (1 << 64) - 1
_MAX_FIELD = (1 << 29) - 1


def _varint(value: int) -> bytes:
    """``value`` as a varint; negative numbers as their 64-bit two's complement (10 bytes)."""
    value &= _MASK64
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def length_field(number: int, data: bytes) -> bytes:
    """A length-delimited field (string, bytes, message)."""
    return _tag(number, LENGTH) + _varint(len(data)) + data


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint longer than 10 bytes")


def _skip_group(data: bytes, pos: int, number: int) -> int:
    while True:
        tag, pos = _read_varint(data, pos)
        if tag >> 32:
            raise DecodeError("field tag out of range")
        wire_type = tag & 7
        if wire_type == END_GROUP:
            if tag >> 3 != number:
                raise DecodeError("mismatched end of group")
            return pos
        pos = _skip(data, pos, tag >> 3, wire_type)


def _skip(data: bytes, pos: int, number: int, wire_type: int) -> int:
    if wire_type == VARINT:
        return _read_varint(data, pos)[1]
    if wire_type == FIXED64:
        pos += 8
    elif wire_type == FIXED32:
        pos += 4
    elif wire_type == LENGTH:
        length, pos = _read_varint(data, pos)
        pos += length
    elif wire_type == START_GROUP:
        return _skip_group(data, pos, number)
    else:
        raise DecodeError(f"field {number}: invalid wire type {wire_type}")
    if pos > len(data):
        raise DecodeError("truncated field")
    return pos


def fields(data: bytes) -> list[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each field; for a varint, start is its value.

    Raises:
        DecodeError: malformed wire data.
    """
    found = []
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _read_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0 or number > _MAX_FIELD or tag >> 32:
            raise DecodeError(f"invalid field number {number}")
        if wire_type == VARINT:
            value, pos = _read_varint(data, pos)
            found.append((number, wire_type, value, pos))
        elif wire_type == LENGTH:
            length, pos = _read_varint(data, pos)
            if length > end - pos:
                raise DecodeError("truncated length-delimited field")
            found.append((number, wire_type, pos, pos + length))
            pos += length
        elif wire_type == END_GROUP:
            raise DecodeError("end of group outside a group")
        else:
            pos = _skip(data, pos, number, wire_type)
    return found


def text(data: bytes, start: int, end: int) -> str:
    """The string in ``data[start:end]``.

    Raises:
        DecodeError: when it is not UTF-8.
    """
    try:
        return data[start:end].decode()
    except UnicodeDecodeError as exc:
        raise DecodeError(f"string field is not valid UTF-8: {exc}") from exc


def varint_field(number: int, value: int) -> bytes:
    """A varint field (int32, int64, uint, bool, enum); negative values take 10 bytes."""
    return _tag(number, VARINT) + _varint(value)


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class KeyValue:
    """ttrpc.KeyValue: one metadata entry."""

    __slots__ = ("key", "value")

    def __init__(self, key: str = "", value: str = "") -> None:
        self.key = key
        self.value = value

    @classmethod
    def _decode(cls, data: bytes) -> KeyValue:
        pair = cls()
        for number, wire_type, start, end in fields(data):
            if wire_type != LENGTH:
                continue
            if number == 1:
                pair.key = text(data, start, end)
            elif number == 2:
                pair.value = text(data, start, end)
        return pair

    def _encode(self) -> bytes:
        out = b""
        if self.key:
            out += length_field(1, self.key.encode())
        if self.value:
            out += length_field(2, self.value.encode())
        return out


class Request:
    """ttrpc.Request: which method of which service, its payload, deadline and metadata."""

    __slots__ = ("metadata", "method", "payload", "service", "timeout_nano")

    def __init__(self, service: str = "", method: str = "", payload: bytes = b"", timeout_nano: int = 0,
                 metadata: Iterable[KeyValue] = ()) -> None:
        self.service = service
        self.method = method
        self.payload = payload
        self.timeout_nano = timeout_nano
        self.metadata = list(metadata)

    @classmethod
    def FromString(cls, data: bytes) -> Request:  # noqa: N802 - protobuf's name for it
        """Decode a serialized Request.

        Raises:
            DecodeError: malformed wire data or a string that is not UTF-8.
        """
        request = cls()
        for number, wire_type, start, end in fields(data):
            if number == 4:
                if wire_type == VARINT:
                    request.timeout_nano = _int64(start)
            elif wire_type != LENGTH:
                continue
            elif number == 1:
                request.service = text(data, start, end)
            elif number == 2:
                request.method = text(data, start, end)
            elif number == 3:
                request.payload = data[start:end]
            elif number == 5:
                request.metadata.append(KeyValue._decode(data[start:end]))
        return request

    def SerializeToString(self) -> bytes:  # noqa: N802 - protobuf's name for it
        """The wire form, as ttrpc_pb2.Request.SerializeToString() gives it."""
        out = b""
        if self.service:
            out += length_field(1, self.service.encode())
        if self.method:
            out += length_field(2, self.method.encode())
        if self.payload:
            out += length_field(3, self.payload)
        if self.timeout_nano:
            out += varint_field(4, self.timeout_nano)
        for pair in self.metadata:
            out += length_field(5, pair._encode())
        return out


def encode_request(service: str, method: str, payload: bytes, timeout_nano: int = 0,
                   metadata: Iterable[tuple[str, str]] = ()) -> bytes:
    """A serialized Request."""
    pairs = [KeyValue(key, value) for key, value in metadata]
    return Request(service, method, payload, timeout_nano, pairs).SerializeToString()


def encode_response(code: int, message: str, payload: bytes) -> bytes:
    """A serialized Response; its Status is always present (empty for OK, as containerd's ttrpc sends it)."""
    status = b""
    if code:
        status += varint_field(1, code)
    if message:
        status += length_field(2, message.encode())
    out = length_field(1, status)
    if payload:
        out += length_field(2, payload)
    return out


def _check_any(data: bytes) -> None:
    """Validate a google.protobuf.Any of Status.details (its type URL must be UTF-8)."""
    for number, wire_type, start, end in fields(data):
        if number == 1 and wire_type == LENGTH:
            text(data, start, end)


def decode_response(data: bytes) -> tuple[int, str, bytes]:
    """(status code, status message, payload) of a serialized Response.

    Raises:
        DecodeError: malformed wire data or a string that is not UTF-8.
    """
    code, message, payload = 0, "", b""
    for number, wire_type, start, end in fields(data):
        if wire_type != LENGTH:
            continue
        if number == 2:
            payload = data[start:end]
        elif number == 1:
            status = data[start:end]
            for field, kind, first, last in fields(status):
                if field == 1 and kind == VARINT:
                    code = _int32(first)
                elif field == 2 and kind == LENGTH:
                    message = text(status, first, last)
                elif field == 3 and kind == LENGTH:
                    _check_any(status[first:last])
    return code, message, payload

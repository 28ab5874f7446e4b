"""Sans-I/O ttRPC connections: feed received bytes in, get events out, get bytes to send back."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.message import DecodeError

from kata.errors import ProtocolError
from kata.ttrpc import wire
from kata.ttrpc.events import (
    ClientEvent,
    ProtocolViolation,
    RequestReceived,
    ResponseReceived,
    ServerEvent,
    SessionRestarted,
    StreamFailed,
)
from kata.ttrpc.frames import (
    MAX_MESSAGE_SIZE,
    MAX_STREAM_ID,
    Frame,
    FrameDecoder,
    FrameType,
    OversizedFrame,
    encode_header,
    oversized_message,
)
from kata.ttrpc.status import (
    Code,
    ConnectionClosedError,
    ResourceExhaustedError,
    UnavailableError,
    status_for_exception,
)

__all__ = ["ClientConnection", "ServerConnection"]

_REQUEST = FrameType.REQUEST
_RESPONSE = FrameType.RESPONSE
_DATA = FrameType.DATA


def _describe(frame_type: int) -> str:
    try:
        return FrameType(frame_type).name.lower()
    except ValueError:
        return f"unknown type {frame_type}"


class ClientConnection:
    """The client half of a ttRPC connection: allocates stream ids and matches responses to calls."""

    __slots__ = ("_closed", "_decoder", "_limit", "_next_stream_id", "_pending")

    def __init__(self, *, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self._decoder = FrameDecoder(max_message_size)
        self._limit = max_message_size
        self._next_stream_id = 1
        self._pending: set[int] = set()
        self._closed = False

    @property
    def pending(self) -> int:
        """Calls sent whose response has not arrived (and that were not abandoned)."""
        return len(self._pending)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` or :meth:`connection_lost` was called."""
        return self._closed

    def send_request(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout_nano: int = 0,
        metadata: Iterable[tuple[str, str]] = (),
    ) -> tuple[int, bytes]:
        """Start a unary call; return its stream id and the frame to send.

        Raises:
            ConnectionClosedError: the connection is closed or lost.
            UnavailableError: every client stream id has been used; reconnect.
            ResourceExhaustedError: the request is larger than the message limit
                (refused locally, no stream id is used up).
        """
        if self._closed:
            raise ConnectionClosedError(f"connection is closed; cannot call {service}/{method}")
        stream_id = self._next_stream_id
        if stream_id > MAX_STREAM_ID:
            raise UnavailableError("all client stream ids are used up; reconnect")
        body = wire.encode_request(service, method, payload, timeout_nano, metadata)
        if len(body) > self._limit:
            raise ResourceExhaustedError(
                f"{service}/{method}: request {oversized_message(len(body), self._limit)}"
            )
        self._next_stream_id = stream_id + 2
        self._pending.add(stream_id)
        return stream_id, encode_header(len(body), stream_id, _REQUEST, 0) + body

    def abandon(self, stream_id: int) -> None:
        """Forget a pending call (timed out or cancelled); its late response is dropped quietly."""
        self._pending.discard(stream_id)

    def close(self) -> None:
        """Refuse new calls; pending calls still receive their responses."""
        self._closed = True

    def connection_lost(self, reason: str) -> list[StreamFailed]:
        """The byte stream is gone: every pending call fails with :class:`ConnectionClosedError`."""
        self._closed = True
        error = ConnectionClosedError(f"connection lost: {reason}")
        failed = [StreamFailed(stream_id, error) for stream_id in sorted(self._pending)]
        self._pending.clear()
        return failed

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        """Consume received bytes; return the events they complete. Never raises."""
        events: list[ClientEvent] = []
        for frame in self._decoder.feed(data):
            event = self._handle(frame)
            if event is not None:
                events.append(event)
        return events

    def _handle(self, frame: Frame | OversizedFrame) -> ClientEvent | None:
        stream_id = frame.stream_id
        if frame.type != _RESPONSE:
            problem = f"stream {stream_id}: unexpected {_describe(frame.type)} frame from the server"
            return ProtocolViolation(stream_id, ProtocolError(problem))
        if stream_id not in self._pending:
            if stream_id % 2 == 1 and stream_id < self._next_stream_id:
                return None  # late answer to an abandoned call
            return ProtocolViolation(stream_id, ProtocolError(f"stream {stream_id}: response to no call"))
        self._pending.discard(stream_id)
        if isinstance(frame, OversizedFrame):
            message = f"response {oversized_message(frame.length, self._limit)}"
            return StreamFailed(stream_id, ResourceExhaustedError(message))
        try:
            code, message, payload = wire.decode_response(frame.payload)
        except DecodeError as exc:
            problem = f"stream {stream_id}: malformed response envelope: {exc}"
            return StreamFailed(stream_id, ProtocolError(problem))
        return ResponseReceived(stream_id, code, message, payload)


class ServerConnection:
    """The server half of a ttRPC connection: validates requests and encodes responses."""

    __slots__ = ("_active", "_closed", "_decoder", "_last_stream_id", "_limit", "_restartable")

    def __init__(self, *, max_message_size: int = MAX_MESSAGE_SIZE, restartable: bool = False) -> None:
        """``restartable``: a request on stream 1 after others starts a new session (SessionRestarted)."""
        self._decoder = FrameDecoder(max_message_size)
        self._limit = max_message_size
        self._last_stream_id = 0
        self._active: set[int] = set()
        self._closed = False
        self._restartable = restartable

    @property
    def active(self) -> int:
        """Requests received and not answered yet."""
        return len(self._active)

    def close(self) -> None:
        """Refuse new requests (they are answered UNAVAILABLE); active ones may still be answered."""
        self._closed = True

    def receive_data(self, data: bytes) -> list[ServerEvent]:
        """Consume received bytes; return the events they complete. Never raises."""
        events: list[ServerEvent] = []
        for frame in self._decoder.feed(data):
            if self._restartable and frame.type == _REQUEST and frame.stream_id == 1 and self._last_stream_id:
                self._last_stream_id = 0
                self._active.clear()
                events.append(SessionRestarted(1))
            event = self._handle(frame)
            if event is not None:
                events.append(event)
        return events

    def send_response(
        self, stream_id: int, code: int = Code.OK, message: str = "", payload: bytes = b""
    ) -> bytes:
        """The response frame answering ``stream_id``, which stops being active.

        A response larger than the message limit is replaced by a RESOURCE_EXHAUSTED
        status, so the peer always gets an answer. Never raises.
        """
        self._active.discard(stream_id)
        # OK travels as an empty Status (no message either), as containerd/ttrpc sends it.
        body = wire.encode_response(code, message if code else "", payload)
        if len(body) > self._limit:
            code = Code.RESOURCE_EXHAUSTED
            body = wire.encode_response(code, f"response {oversized_message(len(body), self._limit)}", b"")
            if len(body) > self._limit:  # only with absurdly small limits: the bare code must do
                body = wire.encode_response(code, "", b"")
        return encode_header(len(body), stream_id, _RESPONSE, 0) + body

    def send_error(self, stream_id: int, error: BaseException) -> bytes:
        """The response frame answering ``stream_id`` with the status for ``error``. Never raises."""
        code, message = status_for_exception(error)
        return self.send_response(stream_id, code, message)

    def _handle(self, frame: Frame | OversizedFrame) -> ServerEvent | None:
        stream_id = frame.stream_id
        frame_type = frame.type
        if frame_type not in (_REQUEST, _DATA):
            problem = f"stream {stream_id}: unexpected {_describe(frame_type)} frame from the client"
            return ProtocolViolation(stream_id, ProtocolError(problem))
        if stream_id in self._active:
            problem = f"stream {stream_id}: {_describe(frame_type)} frame on a unary call in progress"
            return ProtocolViolation(stream_id, ProtocolError(problem))
        if isinstance(frame, OversizedFrame):
            message = f"{_describe(frame_type)} {oversized_message(frame.length, self._limit)}"
            return StreamFailed(stream_id, ResourceExhaustedError(message))
        if stream_id % 2 == 0:
            problem = f"stream {stream_id}: client stream ids must be odd"
            return StreamFailed(stream_id, ProtocolError(problem))
        if frame_type == _DATA:
            return StreamFailed(
                stream_id, ProtocolError(f"stream {stream_id}: data frame on no active stream")
            )
        if stream_id <= self._last_stream_id:
            problem = f"stream {stream_id}: stream ids must increase (last was {self._last_stream_id})"
            return StreamFailed(stream_id, ProtocolError(problem))
        self._last_stream_id = stream_id
        if self._closed:
            return StreamFailed(stream_id, UnavailableError("server is shutting down"))
        try:
            request = wire.Request.FromString(frame.payload)
        except DecodeError as exc:
            problem = f"stream {stream_id}: malformed request envelope: {exc}"
            return StreamFailed(stream_id, ProtocolError(problem))
        self._active.add(stream_id)
        return RequestReceived(stream_id, request)

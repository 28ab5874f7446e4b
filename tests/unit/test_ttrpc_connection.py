"""Sans-I/O connections: stream ids, golden envelopes, limits and malformed input, fuzzed end to end."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kata.errors import ProtocolError
from kata.protocols.pb import ttrpc_pb2
from kata.ttrpc import (
    ClientConnection,
    Code,
    ConnectionClosedError,
    FrameType,
    ProtocolViolation,
    RequestReceived,
    ResourceExhaustedError,
    ResponseReceived,
    ServerConnection,
    StreamFailed,
    UnavailableError,
    encode_frame,
    encode_header,
)

HEALTH_CHECK = "0a0b" + b"grpc.Health".hex() + "1205" + b"Check".hex()


def test_client_stream_ids_are_odd_and_increase_by_two() -> None:
    client = ClientConnection()
    ids = [client.send_request("s", "m", b"")[0] for _ in range(4)]
    assert ids == [1, 3, 5, 7]
    assert client.pending == 4


def test_request_golden_bytes() -> None:
    _, wire = ClientConnection().send_request("grpc.Health", "Check", b"")
    assert wire == bytes.fromhex("00000014 00000001 01 00" + HEALTH_CHECK)


def test_request_golden_bytes_with_payload_timeout_and_metadata() -> None:
    client = ClientConnection()
    client.send_request("grpc.Health", "Check", b"")
    _, wire = client.send_request(
        "grpc.Health", "Check", b"\x08\x01", timeout_nano=1_000_000_000, metadata=[("a", "b")]
    )
    body = (
        HEALTH_CHECK
        + "1a02 0801"  # payload = 08 01
        + "20 8094ebdc03"  # timeout_nano = 1e9 as a varint
        + "2a06 0a0161 120162"  # metadata {key: "a", value: "b"}
    )
    # 20 + 4 + 6 + 8 = 38 = 0x26 bytes of envelope
    assert wire == bytes.fromhex("00000026 00000003 01 00" + body)


def test_response_golden_bytes() -> None:
    server = ServerConnection()
    # OK travels as an empty status message: 0a 00, then payload 12 02 08 01
    assert server.send_response(1, Code.OK, "", b"\x08\x01") == bytes.fromhex(
        "00000006 00000001 02 00 0a00 12020801"
    )
    # status {code: 12, message: "x"}: 0a 05 08 0c 12 01 78
    assert server.send_response(3, Code.UNIMPLEMENTED, "x") == bytes.fromhex(
        "00000007 00000003 02 00 0a05 080c 120178"
    )


def test_client_matches_responses_to_calls() -> None:
    client = ClientConnection()
    first, _ = client.send_request("s", "m", b"")
    second, _ = client.send_request("s", "m", b"")
    server = ServerConnection()
    wire = server.send_response(second, Code.NOT_FOUND, "gone") + server.send_response(
        first, Code.OK, "", b"hi"
    )
    assert client.receive_data(wire) == [
        ResponseReceived(second, Code.NOT_FOUND, "gone", b""),
        ResponseReceived(first, Code.OK, "", b"hi"),
    ]
    assert client.pending == 0


def test_client_drops_late_answers_quietly_but_reports_strangers() -> None:
    client = ClientConnection()
    stream_id, _ = client.send_request("s", "m", b"")
    client.abandon(stream_id)
    server = ServerConnection()
    assert client.receive_data(server.send_response(stream_id)) == []
    [event] = client.receive_data(server.send_response(99))
    assert isinstance(event, ProtocolViolation)
    assert "stream 99: response to no call" in str(event.error)


def test_client_reports_unexpected_frame_types() -> None:
    client = ClientConnection()
    events = client.receive_data(
        encode_frame(2, FrameType.REQUEST, 0, b"") + encode_frame(1, FrameType.DATA, 0, b"")
    )
    problems = [str(event.error) for event in events if isinstance(event, ProtocolViolation)]
    assert len(problems) == len(events) == 2
    assert "unexpected request frame" in problems[0]
    assert "unexpected data frame" in problems[1]


def test_client_oversized_response_fails_only_its_call() -> None:
    client = ClientConnection(max_message_size=64)
    big, _ = client.send_request("s", "m", b"")
    small, _ = client.send_request("s", "m", b"")
    wire = encode_header(1000, big, FrameType.RESPONSE, 0)
    events = client.receive_data(wire + b"z" * 10)
    assert [event.stream_id for event in events] == [big]
    assert isinstance(events[0], StreamFailed)
    assert isinstance(events[0].error, ResourceExhaustedError)
    assert "1000 exceeds maximum message size of 64" in str(events[0].error)
    assert client.receive_data(b"z" * 990 + ServerConnection().send_response(small, payload=b"ok")) == [
        ResponseReceived(small, 0, "", b"ok")
    ]


def test_client_malformed_response_envelope_is_a_protocol_error() -> None:
    client = ClientConnection()
    stream_id, _ = client.send_request("s", "m", b"")
    [event] = client.receive_data(encode_frame(stream_id, FrameType.RESPONSE, 0, b"\xff\xff\xff"))
    assert isinstance(event, StreamFailed)
    assert isinstance(event.error, ProtocolError)
    assert "stream 1: malformed response envelope" in str(event.error)


def test_client_refuses_oversized_request_locally_without_using_a_stream_id() -> None:
    client = ClientConnection(max_message_size=100)
    with pytest.raises(ResourceExhaustedError, match="s/m: request message length 112 exceeds"):
        client.send_request("s", "m", b"x" * 104)
    assert client.send_request("s", "m", b"x")[0] == 1


def test_client_connection_lost_fails_every_pending_call() -> None:
    client = ClientConnection()
    ids = [client.send_request("s", "m", b"")[0] for _ in range(3)]
    client.abandon(ids[1])
    events = client.connection_lost("peer reset")
    assert [event.stream_id for event in events] == [ids[0], ids[2]]
    assert all(isinstance(event.error, ConnectionClosedError) for event in events)
    assert "connection lost: peer reset" in str(events[0].error)
    with pytest.raises(ConnectionClosedError):
        client.send_request("s", "m", b"")


def test_client_close_refuses_new_calls_but_completes_pending() -> None:
    client = ClientConnection()
    stream_id, _ = client.send_request("s", "m", b"")
    client.close()
    assert client.closed
    with pytest.raises(ConnectionClosedError, match="cannot call s/m"):
        client.send_request("s", "m", b"")
    assert client.receive_data(ServerConnection().send_response(stream_id)) == [
        ResponseReceived(stream_id, 0, "", b"")
    ]


def request(stream_id: int, service: str = "s", method: str = "m", flags: int = 0) -> bytes:
    body = ttrpc_pb2.Request(service=service, method=method).SerializeToString()
    return encode_frame(stream_id, FrameType.REQUEST, flags, body)


def test_server_decodes_requests() -> None:
    server = ServerConnection()
    [event] = server.receive_data(request(1, "grpc.Health", "Check"))
    assert isinstance(event, RequestReceived)
    assert (event.stream_id, event.request.service, event.request.method) == (1, "grpc.Health", "Check")
    assert server.active == 1
    server.send_response(1)
    assert server.active == 0


@pytest.mark.parametrize(
    ("wire", "stream_id", "problem"),
    [
        (request(2), 2, "stream 2: client stream ids must be odd"),
        (request(0), 0, "stream 0: client stream ids must be odd"),
        (encode_frame(5, FrameType.REQUEST, 0, b"\x0a\xff"), 5, "stream 5: malformed request envelope"),
        (encode_frame(7, FrameType.DATA, 1, b""), 7, "stream 7: data frame on no active stream"),
    ],
)
def test_server_rejects_bad_streams_with_protocol_errors(wire: bytes, stream_id: int, problem: str) -> None:
    server = ServerConnection()
    [event] = server.receive_data(wire)
    assert isinstance(event, StreamFailed)
    assert isinstance(event.error, ProtocolError)
    assert event.stream_id == stream_id
    assert problem in str(event.error)
    answer = ClientConnection()
    answer._pending.add(stream_id)  # pretend the client made this call
    [response] = answer.receive_data(server.send_error(stream_id, event.error))
    assert isinstance(response, ResponseReceived)
    assert response.code == Code.INVALID_ARGUMENT


def test_server_requires_increasing_stream_ids() -> None:
    server = ServerConnection()
    server.receive_data(request(5))
    [event] = server.receive_data(request(3))
    assert isinstance(event, StreamFailed)
    assert "stream 3: stream ids must increase (last was 5)" in str(event.error)


def test_server_ignores_frames_it_cannot_answer() -> None:
    server = ServerConnection()
    server.receive_data(request(1))
    events = server.receive_data(
        encode_frame(1, FrameType.DATA, 0, b"")  # data on the unary call in progress
        + encode_frame(3, FrameType.RESPONSE, 0, b"")
        + encode_frame(5, 9, 0, b"")
    )
    problems = [str(event.error) for event in events if isinstance(event, ProtocolViolation)]
    assert len(problems) == len(events) == 3
    assert "stream 1: data frame on a unary call in progress" in problems[0]
    assert "unexpected response frame" in problems[1]
    assert "unexpected unknown type 9 frame" in problems[2]


def test_server_oversized_request_is_answered_and_connection_survives() -> None:
    server = ServerConnection(max_message_size=64)
    [event] = server.receive_data(encode_header(100, 1, FrameType.REQUEST, 0) + b"x" * 40)
    assert isinstance(event, StreamFailed)
    assert isinstance(event.error, ResourceExhaustedError)
    assert "request message length 100 exceeds maximum message size of 64" in str(event.error)
    [event] = server.receive_data(b"x" * 60 + request(3))
    assert isinstance(event, RequestReceived)


def test_server_replaces_oversized_response_with_resource_exhausted() -> None:
    server = ServerConnection(max_message_size=100)
    client = ClientConnection(max_message_size=100)
    stream_id, _ = client.send_request("s", "m", b"")
    # 0a 00 | 12 64 + 100 bytes = 104 bytes of envelope
    [response] = client.receive_data(server.send_response(stream_id, Code.OK, "", b"y" * 100))
    assert response == ResponseReceived(
        stream_id,
        Code.RESOURCE_EXHAUSTED,
        "response message length 104 exceeds maximum message size of 100",
        b"",
    )


def test_server_keeps_answers_under_a_tiny_limit() -> None:
    server = ServerConnection(max_message_size=8)
    client = ClientConnection(max_message_size=8)
    stream_id, _ = client.send_request("", "", b"")
    [response] = client.receive_data(server.send_response(stream_id, Code.NOT_FOUND, "a long explanation"))
    assert response == ResponseReceived(stream_id, Code.RESOURCE_EXHAUSTED, "", b"")


def test_closed_server_answers_new_requests_unavailable() -> None:
    server = ServerConnection()
    server.close()
    [event] = server.receive_data(request(1))
    assert isinstance(event, StreamFailed)
    assert isinstance(event.error, UnavailableError)
    assert "server is shutting down" in str(event.error)


# Client and server connections wired back to back, fuzzed.

calls = st.lists(
    st.tuples(
        st.text(max_size=20),  # service
        st.text(max_size=20),  # method
        st.binary(max_size=40),  # payload
        st.integers(0, 2**63 - 1),  # timeout_nano
        st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=3),  # metadata
        st.sampled_from(Code),  # the answer's status
    ),
    max_size=8,
)


@settings(max_examples=1000, deadline=None)
@given(calls, st.randoms(use_true_random=False), st.integers(1, 64))
def test_fuzz_client_and_server_back_to_back(
    made: list[tuple[str, str, bytes, int, list[tuple[str, str]], Code]],
    rng: random.Random,
    chunk: int,
) -> None:
    client, server = ClientConnection(), ServerConnection()
    wire = b""
    expected = {}
    for service, method, payload, timeout_nano, metadata, code in made:
        stream_id, frame = client.send_request(
            service, method, payload, timeout_nano=timeout_nano, metadata=metadata
        )
        wire += frame
        expected[stream_id] = (service, method, payload, timeout_nano, metadata, code)
    received: list[RequestReceived] = []
    for start in range(0, len(wire), chunk):
        for event in server.receive_data(wire[start : start + chunk]):
            assert isinstance(event, RequestReceived)
            received.append(event)
    assert [event.stream_id for event in received] == list(expected)
    for event in received:
        service, method, payload, timeout_nano, metadata, _ = expected[event.stream_id]
        req = event.request
        assert (req.service, req.method, req.payload, req.timeout_nano) == (
            service,
            method,
            payload,
            timeout_nano,
        )
        assert [(pair.key, pair.value) for pair in req.metadata] == metadata
    rng.shuffle(received)
    answers = b"".join(
        server.send_response(event.stream_id, expected[event.stream_id][5], "why", event.request.payload)
        for event in received
    )
    responses = [
        event
        for start in range(0, len(answers), chunk)
        for event in client.receive_data(answers[start : start + chunk])
    ]
    assert [event.stream_id for event in responses] == [event.stream_id for event in received]
    for response in responses:
        assert isinstance(response, ResponseReceived)
        code = expected[response.stream_id][5]
        assert response.code == code
        assert response.message == ("why" if code else "")
        assert response.payload == expected[response.stream_id][2]
    assert client.pending == server.active == 0


def test_restartable_server_starts_a_new_session_when_a_client_starts_over() -> None:
    first, second = ClientConnection(), ClientConnection()
    frames = [first.send_request("s", "m", b"")[1] for _ in range(2)]  # streams 1 and 3
    restartable = ServerConnection(restartable=True)
    assert [type(e).__name__ for e in restartable.receive_data(b"".join(frames))] == ["RequestReceived"] * 2
    events = restartable.receive_data(second.send_request("s", "m", b"")[1])
    assert [type(e).__name__ for e in events] == ["SessionRestarted", "RequestReceived"]
    assert events[1].stream_id == 1
    strict = ServerConnection()
    strict.receive_data(b"".join(frames))
    (refused,) = strict.receive_data(ClientConnection().send_request("s", "m", b"")[1])
    assert not isinstance(refused, RequestReceived)  # without restarts a reused id stays an error

"""Live servers fed random, truncated and oversized frames: no crash, no hang, clear errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kata.protocols.pb import ttrpc_pb2
from kata.ttrpc import Code
from tests.unit.test_ttrpc_support import (
    HEADER,
    SERVER_KINDS,
    SERVICE,
    KeyValue,
    ServerHandle,
    StringList,
    no_stray_threads_or_sockets,
    raw_connection,
    read_frame,
    request_frame,
    running_server,
)

LIMIT = 512  # a small message limit makes oversized frames cheap to send
PROBE_ID = 0xFFFFFFFF  # higher than any generated stream id, so always a valid new stream


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", params=SERVER_KINDS)
def server(request: pytest.FixtureRequest) -> Iterator[ServerHandle]:
    with no_stray_threads_or_sockets(), running_server(request.param, max_message_size=LIMIT) as handle:
        yield handle


kv_payloads = st.builds(
    lambda key, value: KeyValue(key=key, value=value).SerializeToString(),
    st.sampled_from(["NOT_FOUND", "INTERNAL", "OK", "crash", "not-implemented", "bogus"])
    | st.text(max_size=8),
    st.text(max_size=16),
)
envelopes = st.builds(
    lambda service, method, payload, timeout_nano, metadata: ttrpc_pb2.Request(
        service=service,
        method=method,
        payload=payload,
        timeout_nano=timeout_nano,
        metadata=[ttrpc_pb2.KeyValue(key=k, value=v) for k, v in metadata],
    ).SerializeToString(),
    st.sampled_from([SERVICE, SERVICE, "test.Nope", ""]),
    st.sampled_from(["Echo", "EchoAsync", "Fail", "Metadata", "Deadline", "WrongType", "Nope"]),
    kv_payloads | st.binary(max_size=24),
    st.sampled_from([0, 0, -1, 1, 10**9, 2**63 - 1]),
    st.lists(st.tuples(st.text(max_size=4), st.text(max_size=4)), max_size=2),
)
payloads = envelopes | st.binary(max_size=40) | st.binary(min_size=LIMIT + 1, max_size=LIMIT + 64)
frames = st.tuples(
    st.integers(0, 64) | st.integers(0, PROBE_ID - 1),  # stream id
    st.sampled_from([1, 1, 1, 2, 3]) | st.integers(0, 255),  # type
    st.sampled_from([0, 0, 1, 2, 4, 5]) | st.integers(0, 255),  # flags
    payloads,
)


def encode(frame: tuple[int, int, int, bytes]) -> bytes:
    stream_id, frame_type, flags, payload = frame
    return HEADER.pack(len(payload), stream_id, frame_type, flags) + payload


def assert_alive(server: ServerHandle) -> None:
    """A fresh connection gets a correct answer."""
    with raw_connection(server.path) as sock:
        sock.sendall(request_frame(1, "Echo", KeyValue(key="probe")))
        assert_answers_probe(sock, {1}, 1)


def assert_answers_probe(sock: object, sent: set[int], probe: int) -> None:
    """Read well-formed responses for streams we opened until the probe's OK answer arrives."""
    while True:
        stream_id, frame_type, flags, payload = read_frame(sock)  # type: ignore[arg-type]
        assert (frame_type, flags) == (2, 0), "the server only ever sends plain response frames"
        assert len(payload) <= LIMIT
        response = ttrpc_pb2.Response.FromString(payload)
        assert stream_id in sent, f"response on stream {stream_id} that we never used"
        if stream_id == probe:
            assert response.status.code == Code.OK, response.status.message
            assert StringList.FromString(response.payload).list == ["probe", ""]
            return
        if response.status.code in (Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED):
            assert response.status.message, "protocol errors name the problem"


@fuzz_settings(800)
@given(st.lists(frames, max_size=8))
def test_fuzz_frames_then_probe_on_the_same_connection(
    server: ServerHandle, sent: list[tuple[int, int, int, bytes]]
) -> None:
    wire = b"".join(encode(frame) for frame in sent)
    with raw_connection(server.path) as sock:
        sock.sendall(wire + request_frame(PROBE_ID, "Echo", KeyValue(key="probe")))
        assert_answers_probe(sock, {frame[0] for frame in sent} | {PROBE_ID}, PROBE_ID)


@fuzz_settings(400)
@given(st.lists(frames, min_size=1, max_size=6), st.integers(1, 10_000))
def test_fuzz_truncated_frames_then_hang_up(
    server: ServerHandle, sent: list[tuple[int, int, int, bytes]], cut: int
) -> None:
    wire = b"".join(encode(frame) for frame in sent)
    with raw_connection(server.path) as sock:
        sock.sendall(wire[: cut % len(wire)])
    assert_alive(server)


@fuzz_settings(1200)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_then_hang_up(server: ServerHandle, garbage: bytes) -> None:
    with raw_connection(server.path) as sock:
        sock.sendall(garbage)
    assert_alive(server)

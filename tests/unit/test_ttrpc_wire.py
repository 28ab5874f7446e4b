"""The hand-written envelope codec against protobuf's own (upb): same bytes out, same verdict on any input."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from kata.protocols.pb import ttrpc_pb2
from kata.ttrpc import wire

INT64 = st.integers(-(2**63), 2**63 - 1)
texts = st.text(max_size=12)
pairs = st.lists(st.tuples(texts, texts), max_size=3)
requests = st.builds(
    lambda service, method, payload, timeout, metadata: (service, method, payload, timeout, metadata),
    texts, texts, st.binary(max_size=16), INT64, pairs,
)


def _pb_request(service: str, method: str, payload: bytes, timeout: int,
                metadata: list[tuple[str, str]]) -> ttrpc_pb2.Request:
    return ttrpc_pb2.Request(service=service, method=method, payload=payload, timeout_nano=timeout,
                             metadata=[ttrpc_pb2.KeyValue(key=k, value=v) for k, v in metadata])


def _fields(request: wire.Request | ttrpc_pb2.Request) -> tuple[object, ...]:
    return (request.service, request.method, bytes(request.payload), request.timeout_nano,
            [(pair.key, pair.value) for pair in request.metadata])


@given(requests)
@settings(max_examples=300, deadline=None)
def test_requests_encode_and_decode_as_protobuf_does(
        fields: tuple[str, str, bytes, int, list[tuple[str, str]]]) -> None:
    expected = _pb_request(*fields)
    data = wire.encode_request(*fields)
    assert data == expected.SerializeToString()
    assert _fields(wire.Request.FromString(data)) == _fields(expected)


@given(st.integers(-(2**31), 2**31 - 1), texts, st.binary(max_size=16))
@settings(max_examples=300, deadline=None)
def test_responses_encode_and_decode_as_protobuf_does(code: int, message: str, payload: bytes) -> None:
    expected = ttrpc_pb2.Response(payload=payload)
    expected.status.SetInParent()
    expected.status.code = code
    expected.status.message = message
    assert wire.encode_response(code, message, payload) == expected.SerializeToString()
    assert wire.decode_response(expected.SerializeToString()) == (code, message, payload)


def _verdict_request(data: bytes) -> tuple[object, ...] | None:
    try:
        return _fields(ttrpc_pb2.Request.FromString(data))
    except DecodeError:
        return None


def _verdict_response(data: bytes) -> tuple[int, str, bytes] | None:
    try:
        response = ttrpc_pb2.Response.FromString(data)
    except DecodeError:
        return None
    return response.status.code, response.status.message, response.payload


def _ours(decode: object, data: bytes) -> object:
    try:
        return decode(data)  # type: ignore[operator]
    except DecodeError:
        return None


# Mostly well-formed messages with damage: truncation, flipped bytes, junk appended or inserted.
valid = requests.map(lambda fields: _pb_request(*fields).SerializeToString())
damaged = st.tuples(valid, st.integers(0, 40), st.binary(max_size=6), st.integers(0, 255)).map(
    lambda t: (t[0][: t[1]] + t[2] + t[0][t[1]:]) if t[3] % 3 else bytes(b ^ t[3] for b in t[0][: t[1]]) + t[0][t[1]:])
inputs = st.binary(max_size=40) | damaged | valid.map(lambda data: data[: len(data) // 2])

EDGE_CASES = [
    b"", b"\x00", b"\x08", b"\x0a\x05ab", b"\x0b\x0c", b"\x0c", b"\x0b\x10\x01\x0c", b"\x0b\x14", b"\x1b\x1c",
    b"\x0a\x02\xc3\x28", b"\x0a\x03\xed\xa0\x80", b"\x20" + b"\xff" * 9 + b"\x01", b"\x20" + b"\xff" * 10 + b"\x01",
    b"\x20" + b"\xff" * 9 + b"\x7f", b"\x08\x01", b"\x2a\x02\x08\x01", b"\x2a\x02\x0a\xff", b"\xf8\xff\xff\xff\x0f\x00",
    b"\xf8\xff\xff\xff\x1f\x00", b"\x80\x80\x80\x80\x10\x00", b"\x0e", b"\x0f", b"\x0d\x01\x02\x03",
    b"\x09" + b"\x00" * 7, b"\x09" + b"\x00" * 8, b"\x12\x80\x80\x80\x80\x08", b"\x0a\x00\x0a\x01a",
]


@pytest.mark.parametrize("data", EDGE_CASES)
def test_edge_cases_get_protobufs_verdict(data: bytes) -> None:
    assert _ours(lambda d: _fields(wire.Request.FromString(d)), data) == _verdict_request(data)
    assert _ours(wire.decode_response, data) == _verdict_response(data)


@given(inputs)
@settings(max_examples=1500, deadline=None)
def test_any_input_gets_protobufs_verdict(data: bytes) -> None:
    assert _ours(lambda d: _fields(wire.Request.FromString(d)), data) == _verdict_request(data)
    assert _ours(wire.decode_response, data) == _verdict_response(data)




def _response(code: int, message: str, payload: bytes, details: list[tuple[str, bytes]]) -> bytes:
    response = ttrpc_pb2.Response(payload=payload)
    response.status.code = code
    response.status.message = message
    for type_url, value in details:
        response.status.details.add(type_url=type_url, value=value)
    return response.SerializeToString()


responses = st.builds(_response, st.integers(-(2**31), 2**31 - 1), texts, st.binary(max_size=8),
                      st.lists(st.tuples(texts, st.binary(max_size=4)), max_size=2))


@given(st.tuples(responses, st.integers(0, 40), st.binary(max_size=4)))
@settings(max_examples=800, deadline=None)
def test_damaged_responses_get_protobufs_verdict(case: tuple[bytes, int, bytes]) -> None:
    data, cut, junk = case
    for candidate in (data, data[:cut], data[:cut] + junk + data[cut:], data + data):
        assert _ours(wire.decode_response, candidate) == _verdict_response(candidate)

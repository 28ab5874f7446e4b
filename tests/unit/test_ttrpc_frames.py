"""Frame codec: golden bytes computed by hand from the ttRPC spec, and a fuzzed incremental decoder."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kata.ttrpc import (
    HEADER_SIZE,
    MAX_MESSAGE_SIZE,
    Flags,
    Frame,
    FrameDecoder,
    FrameType,
    OversizedFrame,
    ResourceExhaustedError,
    encode_frame,
    encode_header,
)


def test_constants_follow_the_spec() -> None:
    assert HEADER_SIZE == 10
    assert MAX_MESSAGE_SIZE == 4 * 1024 * 1024
    assert (FrameType.REQUEST, FrameType.RESPONSE, FrameType.DATA) == (1, 2, 3)
    assert (Flags.REMOTE_CLOSED, Flags.REMOTE_OPEN, Flags.NO_DATA) == (1, 2, 4)


@pytest.mark.parametrize(
    ("fields", "golden"),
    [
        # length 20, stream 1, request, no flags
        ((20, 1, FrameType.REQUEST, 0), "00000014 00000001 01 00"),
        # length 6, stream 3, response
        ((6, 3, FrameType.RESPONSE, 0), "00000006 00000003 02 00"),
        # empty data frame closing stream 5: remote-closed | no-data = 0x05
        ((0, 5, FrameType.DATA, Flags.REMOTE_CLOSED | Flags.NO_DATA), "00000000 00000005 03 05"),
        # the largest legal payload: 4 MiB = 0x00400000; the highest stream id
        ((MAX_MESSAGE_SIZE, 0xFFFFFFFF, FrameType.REQUEST, Flags.REMOTE_OPEN), "00400000 ffffffff 01 02"),
        # lengths are big-endian: 0x01020304
        ((0x01020304, 0x0A0B0C0D, 7, 0xFF), "01020304 0a0b0c0d 07 ff"),
    ],
)
def test_header_golden_bytes(fields: tuple[int, int, int, int], golden: str) -> None:
    assert encode_header(*fields) == bytes.fromhex(golden)


def test_frame_golden_bytes() -> None:
    # Response{status: {}, payload: 08 01}: 0a 00 | 12 02 08 01
    payload = bytes.fromhex("0a00 1202 0801")
    assert encode_frame(1, FrameType.RESPONSE, 0, payload) == bytes.fromhex(
        "00000006 00000001 02 00 0a00 1202 0801"
    )


@pytest.mark.parametrize("fields", [(-1, 1, 1, 0), (0, 2**32, 1, 0), (0, 1, 256, 0), (0, 1, 1, -1)])
def test_header_fields_out_of_range(fields: tuple[int, int, int, int]) -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode_header(*fields)


def test_oversized_outgoing_frame_is_refused() -> None:
    encode_frame(1, FrameType.REQUEST, 0, b"x" * MAX_MESSAGE_SIZE)
    with pytest.raises(ResourceExhaustedError, match="4194305 exceeds maximum message size of 4194304"):
        encode_frame(1, FrameType.REQUEST, 0, b"x" * (MAX_MESSAGE_SIZE + 1))


def test_decoder_waits_for_whole_frames() -> None:
    decoder = FrameDecoder()
    wire = encode_frame(7, FrameType.DATA, 1, b"hello")
    assert decoder.feed(wire[:4]) == []
    assert decoder.feed(wire[4:12]) == []
    assert decoder.buffered == 12
    assert decoder.feed(wire[12:] + wire[:3]) == [Frame(7, FrameType.DATA, 1, b"hello")]
    assert decoder.buffered == 3


def test_decoder_skips_oversized_payload_without_buffering_it() -> None:
    decoder = FrameDecoder(limit=16)
    header = encode_header(1000, 9, FrameType.REQUEST, 0)
    assert decoder.feed(header + b"a" * 100) == [OversizedFrame(9, FrameType.REQUEST, 0, 1000)]
    assert (decoder.buffered, decoder.skipping) == (0, 900)
    assert decoder.feed(b"b" * 899) == []
    assert decoder.buffered == 0
    follow = encode_frame(11, FrameType.REQUEST, 0, b"ok")
    assert decoder.feed(b"c" + follow) == [Frame(11, FrameType.REQUEST, 0, b"ok")]
    assert (decoder.buffered, decoder.skipping) == (0, 0)


def test_decoder_skips_an_oversized_frame_that_arrived_whole() -> None:
    decoder = FrameDecoder(limit=4)
    wire = encode_header(5, 1, 1, 0) + b"12345" + encode_frame(3, 1, 0, b"1234")
    assert decoder.feed(wire) == [OversizedFrame(1, 1, 0, 5), Frame(3, 1, 0, b"1234")]


def test_decoder_real_limit_is_four_mib() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_header(MAX_MESSAGE_SIZE + 1, 1, 1, 0)) == [
        OversizedFrame(1, 1, 0, MAX_MESSAGE_SIZE + 1)
    ]
    assert decoder.skipping == MAX_MESSAGE_SIZE + 1


# Fuzzing.

frames = st.builds(
    Frame,
    stream_id=st.integers(0, 2**32 - 1),
    type=st.integers(0, 255),
    flags=st.integers(0, 255),
    payload=st.binary(max_size=64),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=1400, deadline=None)
@given(st.lists(frames, max_size=12), st.lists(st.integers(0, 10_000), max_size=12))
def test_fuzz_roundtrip_in_any_chunking(sent: list[Frame], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(f.stream_id, f.type, f.flags, f.payload) for f in sent)
    decoder = FrameDecoder()
    received = [frame for chunk in split(wire, cuts) for frame in decoder.feed(chunk)]
    assert received == sent
    assert decoder.buffered == 0


@settings(max_examples=1400, deadline=None)
@given(
    st.lists(st.tuples(frames, st.booleans()), max_size=10),
    st.lists(st.integers(0, 10_000), max_size=10),
)
def test_fuzz_oversized_frames_are_reported_and_skipped(
    sent: list[tuple[Frame, bool]], cuts: list[int]
) -> None:
    limit = 32
    wire = b""
    expected: list[Frame | OversizedFrame] = []
    for frame, oversized in sent:
        payload = frame.payload[:limit] if not oversized else frame.payload.ljust(limit + 1, b"!")
        wire += encode_header(len(payload), frame.stream_id, frame.type, frame.flags) + payload
        if oversized:
            expected.append(OversizedFrame(frame.stream_id, frame.type, frame.flags, len(payload)))
        else:
            expected.append(frame._replace(payload=payload))
    decoder = FrameDecoder(limit=limit)
    received = []
    for chunk in split(wire, cuts):
        received.extend(decoder.feed(chunk))
        assert decoder.buffered < HEADER_SIZE + limit  # never holds an oversized payload
    assert received == expected


@settings(max_examples=2500, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_fuzz_random_bytes_never_raise_or_overbuffer(chunks: list[bytes]) -> None:
    limit = 64
    decoder = FrameDecoder(limit=limit)
    total = 0
    consumed = 0
    for chunk in chunks:
        total += len(chunk)
        for frame in decoder.feed(chunk):
            if isinstance(frame, Frame):
                assert len(frame.payload) <= limit
                consumed += HEADER_SIZE + len(frame.payload)
            else:
                assert frame.length > limit
                consumed += HEADER_SIZE + frame.length
        assert decoder.buffered < HEADER_SIZE + limit
    # every byte is accounted for: in a frame, buffered, or already part of a skipped payload
    assert consumed + decoder.buffered - decoder.skipping == total

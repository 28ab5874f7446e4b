"""One conformance suite that the asyncio server and the blocking (guest) server both pass."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from kata.protocols.pb import ttrpc_pb2
from kata.ttrpc import (
    MAX_MESSAGE_SIZE,
    Code,
    ConnectionClosedError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    StatusError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
    error_for_status,
)
from kata.ttrpc.aio import AsyncClient, connect, connect_socket, connect_unix
from tests.unit.test_ttrpc_support import (
    HEADER,
    SERVER_KINDS,
    SERVICE,
    KeyValue,
    ServerHandle,
    StringList,
    no_stray_threads_or_sockets,
    raw_connection,
    read_response,
    request_frame,
    running_server,
)

T = TypeVar("T")


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    with no_stray_threads_or_sockets():
        yield


@pytest.fixture(params=SERVER_KINDS)
def server(request: pytest.FixtureRequest) -> Iterator[ServerHandle]:
    with running_server(request.param) as handle:
        yield handle


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


CLIENT_KINDS = ("buffered", "streams", "socket")


async def open_client(path: str, kind: str) -> AsyncClient:
    """A client over each of the client's transports: buffered protocol, stream pair, given socket."""
    if kind == "streams":
        return AsyncClient.from_streams(*await asyncio.open_unix_connection(path))
    if kind == "socket":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return await connect_socket(sock)
    return await connect_unix(path)


async def call(client: AsyncClient, method: str, key: str = "", value: str = "", **kwargs: Any) -> list[str]:
    response = await client.call(SERVICE, method, KeyValue(key=key, value=value), StringList, **kwargs)
    return list(response.list)


def test_unary_call(server: ServerHandle) -> None:
    async def scenario() -> None:
        async with await connect(f"unix://{server.path}") as client:
            assert await call(client, "Echo", "k", "v") == ["k", "v"]
            assert await call(client, "EchoAsync", "k2", "v2") == ["k2", "v2"]

    run(scenario())


@pytest.mark.parametrize("client_kind", CLIENT_KINDS)
def test_hundred_concurrent_calls_on_one_connection(server: ServerHandle, client_kind: str) -> None:
    async def scenario() -> None:
        async with await open_client(server.path, client_kind) as client:
            results = await asyncio.gather(*(call(client, "Echo", str(i), str(i * i)) for i in range(100)))
            assert results == [[str(i), str(i * i)] for i in range(100)]
            # calls overlap: 20 handlers sleeping 0.2 s take far less than 20 * 0.2 s together
            start = time.monotonic()
            slept = await asyncio.gather(*(call(client, "Sleep", value="0.2") for _ in range(20)))
            assert slept == [["slept"]] * 20
            assert time.monotonic() - start < 2.0

    run(scenario())


@pytest.mark.parametrize(
    ("service", "method", "message"),
    [("test.Nope", "Echo", "unknown service test.Nope"), (SERVICE, "Nope", f"unknown method {SERVICE}/Nope")],
)
def test_unknown_service_or_method_is_unimplemented(
    server: ServerHandle, service: str, method: str, message: str
) -> None:
    async def scenario() -> None:
        async with await connect(server.path) as client:
            with pytest.raises(UnimplementedError) as caught:
                await client.call(service, method, KeyValue(), StringList)
            assert caught.value.code == Code.UNIMPLEMENTED
            assert caught.value.message == message

    run(scenario())


@pytest.mark.parametrize(
    "code", [Code.NOT_FOUND, Code.ALREADY_EXISTS, Code.FAILED_PRECONDITION, Code.DATA_LOSS]
)
def test_handler_status_errors_reach_the_client(server: ServerHandle, code: Code) -> None:
    async def scenario() -> None:
        async with await connect(server.path) as client:
            with pytest.raises(StatusError) as caught:
                await call(client, "Fail", code.name, "container abc")
            assert type(caught.value) is type(error_for_status(code, ""))
            assert (caught.value.code, caught.value.message) == (code, "container abc")

    run(scenario())


def test_unexpected_handler_exceptions_answer_unknown_and_bad_returns_internal(server: ServerHandle) -> None:
    async def scenario() -> None:
        async with await connect(server.path) as client:
            with pytest.raises(UnknownError, match="UNKNOWN: disk on fire"):
                await call(client, "Fail", "crash", "disk on fire")
            with pytest.raises(UnimplementedError, match="not yet"):
                await call(client, "Fail", "not-implemented", "not yet")
            with pytest.raises(InternalError, match="handler returned KeyValue, expected StringList"):
                await call(client, "WrongType")
            with pytest.raises(InvalidArgumentError, match="cannot decode KeyValue"):
                await client.call_raw(SERVICE, "Echo", b"\xff\xff")
            assert await call(client, "Echo", "still", "fine") == ["still", "fine"]

    run(scenario())


def test_metadata_reaches_the_handler(server: ServerHandle) -> None:
    async def scenario() -> None:
        async with await connect(server.path) as client:
            assert await call(client, "Metadata") == []
            pairs = [("Foo", "1"), ("foo", "2"), ("bar", "x")]
            assert await call(client, "Metadata", metadata=pairs) == ["bar=x", "foo=1,2"]
            assert await call(client, "Metadata", metadata={"k": "v"}) == ["k=v"]

    run(scenario())


def test_client_timeout_becomes_the_server_deadline(server: ServerHandle) -> None:
    async def scenario() -> None:
        async with await connect(server.path) as client:
            assert await call(client, "Deadline") == ["none"]
            [remaining] = await call(client, "Deadline", timeout=5.0)
            assert 3.0 < float(remaining) <= 5.0

    run(scenario())


def test_call_timeout_and_connection_keeps_working(server: ServerHandle) -> None:
    async def scenario() -> None:
        async with await connect(server.path) as client:
            start = time.monotonic()
            with pytest.raises(DeadlineExceededError):
                await call(client, "Sleep", value="3", timeout=0.2)
            assert time.monotonic() - start < 1.5
            assert client.pending == 0
            assert await call(client, "Echo", "a", "b") == ["a", "b"]

    run(scenario())


def test_server_deadline_answers_deadline_exceeded(server: ServerHandle) -> None:
    with raw_connection(server.path) as sock:
        start = time.monotonic()
        sock.sendall(request_frame(1, "Sleep", KeyValue(value="3"), timeout_nano=150_000_000))
        stream_id, response = read_response(sock)
        assert time.monotonic() - start < 1.5
        assert (stream_id, response.status.code) == (1, Code.DEADLINE_EXCEEDED)
        assert response.status.message == f"{SERVICE}/Sleep: deadline exceeded"
        sock.sendall(request_frame(3, "Sleep", KeyValue(value="0.01"), timeout_nano=-1))  # already expired
        assert read_response(sock)[1].status.code == Code.DEADLINE_EXCEEDED
        sock.sendall(request_frame(5, "Echo", KeyValue(key="after")))
        stream_id, response = read_response(sock)
        assert (stream_id, response.status.code) == (5, Code.OK)
        assert StringList.FromString(response.payload).list == ["after", ""]


def test_oversized_request_is_refused_locally(server: ServerHandle) -> None:
    async def scenario() -> None:
        async with await connect(server.path) as client:
            with pytest.raises(ResourceExhaustedError, match="exceeds maximum message size of 4194304"):
                await call(client, "Echo", "x" * MAX_MESSAGE_SIZE)
            assert await call(client, "Echo", "a") == ["a", ""]

    run(scenario())


def test_oversized_response_is_answered_resource_exhausted(server: ServerHandle) -> None:
    async def scenario() -> None:
        async with await connect(server.path) as client:
            assert (
                len((await call(client, "Big", value=str(MAX_MESSAGE_SIZE - 100)))[0])
                == MAX_MESSAGE_SIZE - 100
            )
            with pytest.raises(ResourceExhaustedError, match="response message length"):
                await call(client, "Big", value=str(MAX_MESSAGE_SIZE))
            assert await call(client, "Echo", "a") == ["a", ""]

    run(scenario())


def test_oversized_incoming_frame_is_skipped_and_connection_survives(server: ServerHandle) -> None:
    with raw_connection(server.path) as sock:
        length = MAX_MESSAGE_SIZE + 1
        sock.sendall(HEADER.pack(length, 1, 1, 0) + b"\0" * length)
        stream_id, response = read_response(sock)
        assert (stream_id, response.status.code) == (1, Code.RESOURCE_EXHAUSTED)
        assert (
            "request message length 4194305 exceeds maximum message size of 4194304"
            in response.status.message
        )
        sock.sendall(request_frame(3, "Echo", KeyValue(key="alive")))
        stream_id, response = read_response(sock)
        assert (stream_id, response.status.code) == (3, Code.OK)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (request_frame(2, "Echo"), "stream 2: client stream ids must be odd"),
        (HEADER.pack(3, 1, 1, 0) + b"\x0a\x05x", "stream 1: malformed request envelope"),
        (HEADER.pack(0, 1, 3, 5), "stream 1: data frame on no active stream"),
    ],
)
def test_malformed_frames_get_invalid_argument_and_connection_survives(
    server: ServerHandle, frame: bytes, message: str
) -> None:
    with raw_connection(server.path) as sock:
        sock.sendall(frame + HEADER.pack(0, 7, 0x42, 0))  # plus an unknown frame type: ignored
        _, response = read_response(sock)
        assert response.status.code == Code.INVALID_ARGUMENT
        assert message in response.status.message
        sock.sendall(request_frame(9, "Echo"))
        assert read_response(sock)[0] == 9


def test_client_vanishing_mid_call_leaves_the_server_healthy(server: ServerHandle) -> None:
    with raw_connection(server.path) as sock:
        sock.sendall(request_frame(1, "Sleep", KeyValue(value="0.3")) + request_frame(3, "Echo"))
        read_response(sock)  # Echo answered while Sleep runs
    with raw_connection(server.path) as sock:
        sock.sendall(request_frame(1, "Echo", KeyValue(key="next")))
        assert read_response(sock)[1].status.code == Code.OK


@pytest.mark.parametrize("client_kind", CLIENT_KINDS)
def test_server_vanishing_mid_call_fails_pending_calls_promptly(
    server: ServerHandle, client_kind: str
) -> None:
    async def scenario() -> None:
        client = await open_client(server.path, client_kind)
        sleeping = [asyncio.ensure_future(call(client, "Sleep", value="10")) for _ in range(3)]
        await asyncio.sleep(0.1)
        start = time.monotonic()
        server.stop(grace=0.0)
        for task in sleeping:
            with pytest.raises(ConnectionClosedError, match="connection lost"):
                await task
        assert time.monotonic() - start < 3.0
        with pytest.raises(ConnectionClosedError):
            await call(client, "Echo")
        await client.close()

    run(scenario())


def test_graceful_server_stop_finishes_running_calls_and_refuses_new_ones(server: ServerHandle) -> None:
    async def scenario() -> None:
        async with await connect(server.path) as client:
            sleeping = asyncio.ensure_future(call(client, "Sleep", value="0.5"))
            await asyncio.sleep(0.1)
            server.stop(grace=5.0)
            await asyncio.sleep(0.1)
            with pytest.raises(UnavailableError, match="server is shutting down"):
                await call(client, "Echo")
            assert await sleeping == ["slept"]
            with pytest.raises(UnavailableError):
                await connect(server.path)

    run(scenario())


@pytest.mark.parametrize("client_kind", CLIENT_KINDS)
def test_graceful_client_close_waits_for_pending_calls(server: ServerHandle, client_kind: str) -> None:
    async def scenario() -> None:
        client = await open_client(server.path, client_kind)
        sleeping = asyncio.ensure_future(call(client, "Sleep", value="0.2"))
        await asyncio.sleep(0.05)
        await client.close()
        assert await sleeping == ["slept"]
        with pytest.raises(ConnectionClosedError):
            await call(client, "Echo")

    run(scenario())


def test_not_found_is_a_status_error_not_a_lookup_error(server: ServerHandle) -> None:
    async def scenario() -> None:
        async with await connect(server.path) as client:
            with pytest.raises(NotFoundError):
                await call(client, "Fail", "NOT_FOUND", "x")

    run(scenario())


def test_request_envelope_fields_are_what_containerd_sends(server: ServerHandle) -> None:
    # A request encoded by the generated protobuf code, as a Go client would encode it.
    body = ttrpc_pb2.Request(
        service=SERVICE,
        method="Metadata",
        payload=b"",
        timeout_nano=2_000_000_000,
        metadata=[ttrpc_pb2.KeyValue(key="containerd-namespace", value="k8s.io")],
    ).SerializeToString()
    with raw_connection(server.path) as sock:
        sock.sendall(HEADER.pack(len(body), 1, 1, 0) + body)
        _, response = read_response(sock)
        assert StringList.FromString(response.payload).list == ["containerd-namespace=k8s.io"]

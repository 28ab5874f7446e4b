"""The asyncio client and server: addresses, timeouts, cancellation, vanishing peers, any byte stream."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from kata.errors import ProtocolError
from kata.protocols.pb import ttrpc_pb2
from kata.ttrpc import (
    CallContext,
    ConnectionClosedError,
    DeadlineExceededError,
    Router,
    ServerConnection,
    UnavailableError,
    encode_frame,
)
from kata.ttrpc.aio import AsyncClient, AsyncServer, connect, connect_unix, unix_path
from tests.unit.test_ttrpc_support import (
    SERVICE,
    KeyValue,
    StringList,
    make_router,
    no_stray_threads_or_sockets,
)

T = TypeVar("T")
RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    with no_stray_threads_or_sockets():
        yield


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.mark.parametrize(
    ("address", "path"),
    [
        ("unix:///run/kata/s.sock", "/run/kata/s.sock"),
        ("unix:/run/kata/s.sock", "/run/kata/s.sock"),
        ("unix:relative.sock", "relative.sock"),
        ("/run/containerd/containerd.sock.ttrpc", "/run/containerd/containerd.sock.ttrpc"),
        ("unix://@abstract", "\0abstract"),
        ("@abstract", "\0abstract"),
    ],
)
def test_unix_addresses(address: str, path: str) -> None:
    assert unix_path(address) == path


@pytest.mark.parametrize("address", ["", "unix://", "vsock://3:1024", "tcp://127.0.0.1:1"])
def test_unsupported_addresses(address: str) -> None:
    with pytest.raises(ValueError, match="address"):
        unix_path(address)


def test_connecting_to_nothing_is_unavailable() -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.raises(UnavailableError, match="cannot connect"):
        run(connect(os.path.join(tmp, "missing.sock")))


async def with_raw_server(handler: RawHandler, scenario: Callable[[AsyncClient], Awaitable[None]]) -> None:
    """Run ``scenario`` with a client connected to a hand-written server ``handler``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "raw.sock")
        server = await asyncio.start_unix_server(handler, path)
        try:
            client = await connect_unix(path)
            try:
                await scenario(client)
            finally:
                await client.close(timeout=0)
        finally:
            server.close()
            await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> int:
    header = await reader.readexactly(10)
    await reader.readexactly(int.from_bytes(header[:4], "big"))
    return int.from_bytes(header[4:8], "big")


def test_client_timeout_abandons_the_call_and_drops_the_late_answer() -> None:
    async def late_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream_id = await read_request(reader)
        await asyncio.sleep(0.3)
        conn = ServerConnection()
        writer.write(conn.send_response(stream_id, payload=StringList(list=["late"]).SerializeToString()))
        stream_id = await read_request(reader)
        writer.write(conn.send_response(stream_id, payload=StringList(list=["on time"]).SerializeToString()))
        await reader.read()
        writer.close()

    async def scenario(client: AsyncClient) -> None:
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError, match=f"{SERVICE}/Echo: no response within 0.1 s"):
            await client.call(SERVICE, "Echo", KeyValue(), StringList, timeout=0.1)
        assert time.monotonic() - start < 0.25
        assert client.pending == 0
        await asyncio.sleep(0.3)  # the late answer arrives and is dropped
        assert (await client.call(SERVICE, "Echo", KeyValue(), StringList)).list == ["on time"]

    run(with_raw_server(late_server, scenario))


def test_cancelled_call_is_abandoned() -> None:
    async def silent_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    async def scenario(client: AsyncClient) -> None:
        task = asyncio.ensure_future(client.call(SERVICE, "Echo", KeyValue(), StringList))
        await asyncio.sleep(0.05)
        assert client.pending == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.pending == 0

    run(with_raw_server(silent_server, scenario))


def test_server_vanishing_mid_call_fails_every_pending_call() -> None:
    async def vanishing_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await read_request(reader)
        writer.close()

    async def scenario(client: AsyncClient) -> None:
        calls = [
            asyncio.ensure_future(client.call(SERVICE, "Echo", KeyValue(), StringList)) for _ in range(2)
        ]
        for call in calls:
            with pytest.raises(
                ConnectionClosedError, match="connection lost: the peer closed the connection"
            ):
                await call
        with pytest.raises(ConnectionClosedError, match="connection lost"):
            await client.call(SERVICE, "Echo", KeyValue(), StringList)

    run(with_raw_server(vanishing_server, scenario))


def test_malformed_responses_are_protocol_errors() -> None:
    async def confused_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ServerConnection()
        stream_id = await read_request(reader)
        writer.write(encode_frame(stream_id, 2, 0, b"\x0a\x09broken"))  # bad envelope
        stream_id = await read_request(reader)
        writer.write(conn.send_response(stream_id, payload=b"\xff\xff"))  # bad StringList
        stream_id = await read_request(reader)
        writer.write(
            encode_frame(stream_id, 3, 0, b"") + conn.send_response(stream_id)
        )  # data frame: ignored
        await reader.read()
        writer.close()

    async def scenario(client: AsyncClient) -> None:
        with pytest.raises(ProtocolError, match="stream 1: malformed response envelope"):
            await client.call(SERVICE, "Echo", KeyValue(), StringList)
        with pytest.raises(ProtocolError, match=f"{SERVICE}/Echo: cannot decode StringList response"):
            await client.call(SERVICE, "Echo", KeyValue(), StringList)
        assert (await client.call(SERVICE, "Echo", KeyValue(), StringList)).list == []

    run(with_raw_server(confused_server, scenario))


def test_timeout_must_be_positive() -> None:
    async def silent_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    async def scenario(client: AsyncClient) -> None:
        with pytest.raises(ValueError, match="timeout must be positive"):
            await client.call(SERVICE, "Echo", KeyValue(), StringList, timeout=0)

    run(with_raw_server(silent_server, scenario))


def test_client_and_server_over_any_stream_pair() -> None:
    async def scenario() -> None:
        host, guest = socket.socketpair()
        server = AsyncServer(make_router("asyncio"))
        serving = asyncio.ensure_future(server.serve_stream(*await asyncio.open_connection(sock=guest)))
        client = AsyncClient.from_streams(*await asyncio.open_connection(sock=host))
        assert (await client.call(SERVICE, "EchoAsync", KeyValue(key="pair"), StringList)).list == [
            "pair",
            "",
        ]
        await client.close()
        await serving  # the server sees end-of-stream and finishes
        await server.close()

    run(scenario())


def test_asyncio_server_cancels_handlers_of_a_vanished_client() -> None:
    cancelled = asyncio.Event()

    async def wait_forever(request: KeyValue, context: CallContext) -> StringList:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return StringList()

    router = Router()
    router.register(SERVICE, {"Wait": (KeyValue, StringList, wait_forever)})

    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "s.sock")
            async with AsyncServer(router) as server:
                await server.listen_unix(path)
                client = await connect(path)
                call = asyncio.ensure_future(client.call(SERVICE, "Wait", KeyValue(), StringList))
                await asyncio.sleep(0.05)
                await client.close(timeout=0)
                with pytest.raises(ConnectionClosedError):
                    await call
                await asyncio.wait_for(cancelled.wait(), 5)
            assert not os.path.exists(path)  # the server removed its socket file
            with pytest.raises(RuntimeError, match="closing"):
                await server.listen_unix(path)
            await server.close()  # idempotent

    run(scenario())


def test_server_deadline_cancels_the_handler_task() -> None:
    async def scenario() -> None:
        host, guest = socket.socketpair()
        server = AsyncServer(make_router("asyncio"))
        serving = asyncio.ensure_future(server.serve_stream(*await asyncio.open_connection(sock=guest)))
        reader, writer = await asyncio.open_connection(sock=host)
        body = ttrpc_pb2.Request(
            service=SERVICE,
            method="Sleep",
            payload=KeyValue(value="30").SerializeToString(),
            timeout_nano=100_000_000,
        ).SerializeToString()
        writer.write(encode_frame(1, 1, 0, body))
        header = await asyncio.wait_for(reader.readexactly(10), 5)
        response = ttrpc_pb2.Response.FromString(await reader.readexactly(int.from_bytes(header[:4], "big")))
        assert response.status.code == 4  # DEADLINE_EXCEEDED
        writer.close()
        await writer.wait_closed()
        await serving
        await server.close()

    run(scenario())

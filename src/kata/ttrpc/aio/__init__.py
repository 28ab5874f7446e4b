"""asyncio ttRPC client and server for the host side (imports asyncio; the guest uses kata.ttrpc.blocking)."""

from __future__ import annotations

from kata.ttrpc.aio.address import unix_path
from kata.ttrpc.aio.client import AsyncClient, Metadata, connect, connect_socket, connect_unix
from kata.ttrpc.aio.server import AsyncServer
from kata.ttrpc.aio.transport import BufferedPipe, Pipe, Receiver, StreamPipe

__all__ = [
    "AsyncClient",
    "AsyncServer",
    "BufferedPipe",
    "Metadata",
    "Pipe",
    "Receiver",
    "StreamPipe",
    "connect",
    "connect_socket",
    "connect_unix",
    "unix_path",
]

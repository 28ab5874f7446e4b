"""Open the agent channel by URL: unix (QEMU virtio-serial chardev), vsock, hybrid vsock."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from kata.errors import AgentError
from kata.ttrpc.aio import AsyncClient, connect_socket

__all__ = ["DEFAULT_AGENT_PORT", "ChannelAddress", "open_channel", "parse_channel_url"]

DEFAULT_AGENT_PORT = 1024
RETRY_INTERVAL = 0.05


@dataclass(frozen=True)
class ChannelAddress:
    """Where the agent listens: ``unix`` (path), ``vsock`` (cid, port) or ``hvsock`` (path, port)."""

    scheme: str
    path: str = ""
    cid: int = 0
    port: int = DEFAULT_AGENT_PORT

    def url(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        if self.scheme == "vsock":
            return f"vsock://{self.cid}:{self.port}"
        return f"hvsock://{self.path}:{self.port}"


def parse_channel_url(url: str) -> ChannelAddress:
    """``unix:///run/kata/ID/agent.sock``, ``vsock://3:1024`` or ``hvsock:///path/hvsock.sock:1024``.

    Raises:
        AgentError: for an unknown scheme or a malformed address.
    """
    parts = urlsplit(url)
    try:
        if parts.scheme == "unix" and parts.path:
            return ChannelAddress("unix", path=parts.path)
        if parts.scheme == "vsock" and parts.hostname:
            return ChannelAddress("vsock", cid=int(parts.hostname), port=parts.port or DEFAULT_AGENT_PORT)
        if parts.scheme == "hvsock":
            path, _, port = parts.path.rpartition(":")
            return ChannelAddress("hvsock", path=path, port=int(port))
    except ValueError as exc:
        raise AgentError(f"malformed agent channel URL {url!r}: {exc}") from exc
    raise AgentError(f"unsupported agent channel URL {url!r} (unix://, vsock:// or hvsock://)")


def _connect_once(address: ChannelAddress) -> socket.socket:
    if address.scheme == "vsock":
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        target: tuple[int, int] | str = (address.cid, address.port)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = address.path
    try:
        sock.connect(target)
        if address.scheme == "hvsock":
            _hybrid_handshake(sock, address.port)
    except OSError:
        sock.close()
        raise
    return sock


def _hybrid_handshake(sock: socket.socket, port: int) -> None:
    """Firecracker/Cloud Hypervisor hybrid vsock: ``CONNECT <port>\\n`` answered by ``OK <n>\\n``."""
    sock.sendall(f"CONNECT {port}\n".encode())
    reply = b""
    while not reply.endswith(b"\n") and len(reply) < 64:
        chunk = sock.recv(1)
        if not chunk:
            break
        reply += chunk
    if not reply.startswith(b"OK "):
        raise ConnectionRefusedError(f"hybrid vsock refused port {port}: {reply!r}")


async def open_channel(url: str, *, timeout: float) -> AsyncClient:
    """Connect a ttRPC client to the agent channel, retrying until ``timeout`` seconds pass.

    Raises:
        AgentError: when no connection could be made in time.
    """
    address = parse_channel_url(url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = await asyncio.to_thread(_connect_once, address)
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise AgentError(f"cannot connect to the agent at {url}: {exc}") from exc
            await asyncio.sleep(RETRY_INTERVAL)
            continue
        sock.setblocking(False)
        return await connect_socket(sock)

"""Host side of the guest agent: typed requests, the one protobuf translation module, transports."""

from __future__ import annotations

from kata.agent.client import AgentClient
from kata.agent.transport import ChannelAddress, open_channel, parse_channel_url
from kata.agent.types import (
    AgentVersion,
    ContainerRequest,
    ExecRequest,
    GuestDetails,
    KernelModule,
    SandboxRequest,
    Storage,
)

__all__ = [
    "AgentClient",
    "AgentVersion",
    "ChannelAddress",
    "ContainerRequest",
    "ExecRequest",
    "GuestDetails",
    "KernelModule",
    "SandboxRequest",
    "Storage",
    "open_channel",
    "parse_channel_url",
]

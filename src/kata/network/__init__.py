"""Host networking of a sandbox: the container's network namespace wired to the VM by tc mirred redirect."""

from kata.network.netns import create_netns, in_netns, remove_netns, spec_netns
from kata.network.scan import Endpoint, NetworkInfo, scan
from kata.network.wiring import (
    MODELS,
    AddedEndpoint,
    EndpointRecord,
    NetworkRecord,
    WiredNetwork,
    configure_guest,
    unwire,
    unwire_endpoint,
    wire,
    wire_endpoint,
)

__all__ = [
    "MODELS",
    "AddedEndpoint",
    "Endpoint",
    "EndpointRecord",
    "NetworkInfo",
    "NetworkRecord",
    "WiredNetwork",
    "configure_guest",
    "create_netns",
    "in_netns",
    "remove_netns",
    "scan",
    "spec_netns",
    "unwire",
    "unwire_endpoint",
    "wire",
    "wire_endpoint",
]

"""Host networking of a sandbox: the container's network namespace wired to the VM by tc mirred redirect."""

from kata.network.netns import create_netns, in_netns, remove_netns, spec_netns
from kata.network.scan import Endpoint, NetworkInfo, scan
from kata.network.wiring import MODELS, EndpointRecord, NetworkRecord, WiredNetwork, configure_guest, unwire, wire

__all__ = [
    "MODELS",
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
    "wire",
]

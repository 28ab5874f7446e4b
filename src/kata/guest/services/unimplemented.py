"""AgentService RPCs this agent does not serve yet, each answering UNIMPLEMENTED with its reason."""

from __future__ import annotations

from google.protobuf.message_factory import GetMessageClass

from kata.protocols.pb import agent_pb2
from kata.ttrpc.status import UnimplementedError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from kata.ttrpc.dispatch import CallContext, Handler, MethodSpec

__all__ = ["REASONS", "unimplemented_methods"]

REASONS: dict[str, str] = {
    "GetIPTables": "the guest image carries no iptables",
    "SetIPTables": "the guest image carries no iptables",
    "UpdateEphemeralMounts": "ephemeral mount updates are not supported",
    "RemoveStaleVirtiofsShareMounts": "not needed: virtio-fs shares are not remounted",
    "GetDiagnosticData": "no diagnostic data is collected",
    "MemAgentMemcgSet": "there is no memory agent in this guest",
    "MemAgentCompactSet": "there is no memory agent in this guest",
    "AddSwap": "swap is not supported",
    "AddSwapPath": "swap is not supported",
    "GetVolumeStats": "volume statistics are not supported",
    "ResizeVolume": "volume resizing is not supported",
    "SetPolicy": "agent policy is not supported yet",
}


def _refuse(method: str, reason: str) -> Handler:
    def handler(request: Any, context: CallContext) -> Any:
        del request, context
        raise UnimplementedError(f"{method}: {reason}")
    return handler


def unimplemented_methods() -> dict[str, MethodSpec]:
    """Method specs of grpc.AgentService refusing every RPC of ``REASONS``."""
    service = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
    specs: dict[str, MethodSpec] = {}
    for method in service.methods:
        if method.name in REASONS:
            specs[method.name] = (GetMessageClass(method.input_type), GetMessageClass(method.output_type),
                                  _refuse(method.name, REASONS[method.name]))
    return specs

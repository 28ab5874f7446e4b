"""Full names and method tables of the ttRPC services we serve or call."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeAlias

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from kata.protocols.pb import agent_pb2, events_service_pb2, health_pb2, shim_task_pb2

__all__ = [
    "AGENT_SERVICE",
    "EVENTS_SERVICE",
    "HEALTH_SERVICE",
    "SERVICES",
    "TASK_SERVICE",
    "MethodTypes",
    "service_methods",
]

# These are the `service` strings of ttRPC requests: the .proto package plus the
# service name, exactly as Kata's agent, Kata's runtime and containerd send them.
AGENT_SERVICE = "grpc.AgentService"
HEALTH_SERVICE = "grpc.Health"
TASK_SERVICE = "containerd.task.v2.Task"
EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"

MethodTypes: TypeAlias = tuple[type[Message], type[Message]]
"""(request message class, response message class) of one RPC."""

SERVICES: Mapping[str, ServiceDescriptor] = MappingProxyType(
    {
        service.full_name: service
        for module in (agent_pb2, health_pb2, shim_task_pb2, events_service_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
    }
)


def service_methods(full_name: str) -> dict[str, MethodTypes]:
    """Map each method name of service ``full_name`` to its message classes.

    Raises KeyError if ``full_name`` is not one of :data:`SERVICES`.
    """
    service = SERVICES[full_name]
    return {
        method.name: (GetMessageClass(method.input_type), GetMessageClass(method.output_type))
        for method in service.methods
    }

"""The agent's ttRPC services: grpc.Health and grpc.AgentService over the guest runtime."""

from __future__ import annotations

from kata.guest.services.containers import ContainerService
from kata.guest.services.health import health_methods
from kata.guest.services.sandbox import GuestSandbox
from kata.guest.services.storage import StorageManager
from kata.guest.services.unimplemented import unimplemented_methods
from kata.ttrpc.dispatch import Router

__all__ = ["AGENT_SERVICE", "HEALTH_SERVICE", "ContainerService", "GuestSandbox", "StorageManager",
           "build_router"]

AGENT_SERVICE = "grpc.AgentService"
HEALTH_SERVICE = "grpc.Health"


def build_router(sandbox: GuestSandbox, containers: ContainerService) -> Router:
    """Every RPC of grpc.AgentService (served or refused with a reason) and grpc.Health."""
    router = Router()
    router.register(HEALTH_SERVICE, health_methods())
    router.register(AGENT_SERVICE, {**unimplemented_methods(), **sandbox.methods(), **containers.methods()})
    return router

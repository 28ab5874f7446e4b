"""The agent's ttRPC services: grpc.Health and grpc.AgentService over the guest runtime."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kata.guest.services.containers import ContainerService
    from kata.guest.services.sandbox import GuestSandbox
    from kata.guest.services.storage import StorageManager
    from kata.ttrpc.dispatch import Router

__all__ = ["AGENT_SERVICE", "HEALTH_SERVICE", "ContainerService", "GuestSandbox", "StorageManager",
           "build_router"]

AGENT_SERVICE = "grpc.AgentService"
HEALTH_SERVICE = "grpc.Health"

# The guest answers Health.Check before the rest is imported (kata.guest.loading): importing
# kata.guest.services.health must not import the other services, so they load on first use.
_LAZY = {"ContainerService": "containers", "GuestSandbox": "sandbox", "StorageManager": "storage"}

if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """Import the service module of ``name`` when it is first asked for."""
        if name not in _LAZY:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value


def build_router(sandbox: GuestSandbox, containers: ContainerService) -> Router:
    """Every RPC of grpc.AgentService (served or refused with a reason) and grpc.Health."""
    from kata.guest.services.health import health_methods
    from kata.guest.services.network import NetworkService
    from kata.guest.services.unimplemented import unimplemented_methods
    from kata.ttrpc.dispatch import Router

    router = Router()
    router.register(HEALTH_SERVICE, health_methods())
    network = NetworkService(sandbox.log, wait_modules=sandbox.storage.wait_modules)
    router.register(AGENT_SERVICE, {**unimplemented_methods(), **sandbox.methods(), **containers.methods(),
                                    **network.methods()})
    return router

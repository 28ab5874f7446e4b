"""grpc.Health: Check and Version."""

from __future__ import annotations

from kata import __version__
from kata.protocols.pb import health_pb2

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kata.ttrpc.dispatch import CallContext, MethodSpec

__all__ = ["AGENT_VERSION", "GRPC_VERSION", "health_methods"]

AGENT_VERSION = __version__
GRPC_VERSION = "pykata-ttrpc"


def check(request: health_pb2.CheckRequest, context: CallContext) -> health_pb2.HealthCheckResponse:
    del request, context
    return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def version(request: health_pb2.CheckRequest, context: CallContext) -> health_pb2.VersionCheckResponse:
    del request, context
    return health_pb2.VersionCheckResponse(grpc_version=GRPC_VERSION, agent_version=AGENT_VERSION)


def health_methods() -> dict[str, MethodSpec]:
    """The grpc.Health method table."""
    return {
        "Check": (health_pb2.CheckRequest, health_pb2.HealthCheckResponse, check),
        "Version": (health_pb2.CheckRequest, health_pb2.VersionCheckResponse, version),
    }

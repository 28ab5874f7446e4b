"""grpc.Health: Check and Version, with their messages encoded by hand.

PID 1 answers the host's first Health.Check before protobuf's runtime is imported (about 0.2 s under
TCG, see kata.guest.loading), so the three messages of health.proto are written here with
kata.ttrpc.wire, byte for byte as health_pb2 writes them (the unit tests compare both).
"""

from __future__ import annotations

from google.protobuf.message import Message

from kata import __version__
from kata.ttrpc import wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Self

    from kata.ttrpc.dispatch import CallContext, MethodSpec

__all__ = ["AGENT_VERSION", "GRPC_VERSION", "SERVING", "CheckRequest", "HealthCheckResponse",
           "VersionCheckResponse", "health_methods"]

AGENT_VERSION = __version__
GRPC_VERSION = "pykata-ttrpc"
SERVING = 1  # grpc.HealthCheckResponse.ServingStatus.SERVING


class _HandCoded(Message):
    """A message encoded by hand; a Message only so that the ttRPC router accepts its type."""

    __slots__ = ()

    @classmethod
    def FromString(cls, s: bytes) -> Self:  # noqa: N802 - protobuf's names
        """Decode ``s``.

        Raises:
            DecodeError: malformed wire data or a string that is not UTF-8.
        """
        message = cls()
        message._merge(s)
        return message

    def _merge(self, data: bytes) -> None:
        raise NotImplementedError

    def SerializeToString(self, **kwargs: Any) -> bytes:  # noqa: N802
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.SerializeToString() == other.SerializeToString()

    def __hash__(self) -> int:
        raise TypeError("unhashable object")


class CheckRequest(_HandCoded):
    """grpc.CheckRequest{string service = 1}."""

    __slots__ = ("service",)

    def __init__(self, service: str = "") -> None:
        self.service = service

    def _merge(self, data: bytes) -> None:
        for number, wire_type, start, end in wire.fields(data):
            if number == 1 and wire_type == wire.LENGTH:
                self.service = wire.text(data, start, end)

    def SerializeToString(self, **kwargs: Any) -> bytes:  # noqa: N802
        return wire.length_field(1, self.service.encode()) if self.service else b""


class HealthCheckResponse(_HandCoded):
    """grpc.HealthCheckResponse{ServingStatus status = 1} (UNKNOWN 0, SERVING 1, NOT_SERVING 2)."""

    __slots__ = ("status",)

    def __init__(self, status: int = 0) -> None:
        self.status = status

    def _merge(self, data: bytes) -> None:
        for number, wire_type, start, _ in wire.fields(data):
            if number == 1 and wire_type == wire.VARINT:
                value = start & 0xFFFFFFFF
                self.status = value - (1 << 32) if value >= 1 << 31 else value

    def SerializeToString(self, **kwargs: Any) -> bytes:  # noqa: N802
        return wire.varint_field(1, self.status) if self.status else b""


class VersionCheckResponse(_HandCoded):
    """grpc.VersionCheckResponse{string grpc_version = 1; string agent_version = 2}."""

    __slots__ = ("agent_version", "grpc_version")

    def __init__(self, grpc_version: str = "", agent_version: str = "") -> None:
        self.grpc_version = grpc_version
        self.agent_version = agent_version

    def _merge(self, data: bytes) -> None:
        for number, wire_type, start, end in wire.fields(data):
            if wire_type != wire.LENGTH:
                continue
            if number == 1:
                self.grpc_version = wire.text(data, start, end)
            elif number == 2:
                self.agent_version = wire.text(data, start, end)

    def SerializeToString(self, **kwargs: Any) -> bytes:  # noqa: N802
        out = wire.length_field(1, self.grpc_version.encode()) if self.grpc_version else b""
        return out + (wire.length_field(2, self.agent_version.encode()) if self.agent_version else b"")


def check(request: CheckRequest, context: CallContext) -> HealthCheckResponse:
    del request, context
    return HealthCheckResponse(status=SERVING)


def version(request: CheckRequest, context: CallContext) -> VersionCheckResponse:
    del request, context
    return VersionCheckResponse(grpc_version=GRPC_VERSION, agent_version=AGENT_VERSION)


def health_methods() -> dict[str, MethodSpec]:
    """The grpc.Health method table."""
    return {
        "Check": (CheckRequest, HealthCheckResponse, check),
        "Version": (CheckRequest, VersionCheckResponse, version),
    }

"""gRPC status codes and their mapping to and from pykata exceptions."""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar

from kata.errors import ProtocolError, RpcError

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "CancelledCallError",
    "Code",
    "ConnectionClosedError",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "StatusError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "error_for_status",
    "status_for_exception",
]


class Code(IntEnum):
    """The gRPC status codes, with their standard numbers (google.rpc.Code)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class StatusError(RpcError):
    """An :class:`RpcError` whose class fixes the status code; raise one from a handler to answer it."""

    status: ClassVar[Code] = Code.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(self.status, message)

    def __str__(self) -> str:
        return f"{self.status.name}: {self.message}"


class CancelledCallError(StatusError):
    """CANCELLED: the call was cancelled, typically by the caller."""

    status = Code.CANCELLED


class UnknownError(StatusError):
    """UNKNOWN: the handler failed with an error that has no better code."""

    status = Code.UNKNOWN


class InvalidArgumentError(StatusError):
    """INVALID_ARGUMENT: the request is malformed, whatever the server's state."""

    status = Code.INVALID_ARGUMENT


class DeadlineExceededError(StatusError):
    """DEADLINE_EXCEEDED: the call did not complete before its deadline."""

    status = Code.DEADLINE_EXCEEDED


class NotFoundError(StatusError):
    """NOT_FOUND: a requested entity (container, process, file) does not exist."""

    status = Code.NOT_FOUND


class AlreadyExistsError(StatusError):
    """ALREADY_EXISTS: the entity the call wanted to create exists already."""

    status = Code.ALREADY_EXISTS


class PermissionDeniedError(StatusError):
    """PERMISSION_DENIED: the caller may not do this."""

    status = Code.PERMISSION_DENIED


class ResourceExhaustedError(StatusError):
    """RESOURCE_EXHAUSTED: a limit was hit, e.g. the 4 MiB ttRPC message size."""

    status = Code.RESOURCE_EXHAUSTED


class FailedPreconditionError(StatusError):
    """FAILED_PRECONDITION: the system is not in the state the call needs."""

    status = Code.FAILED_PRECONDITION


class AbortedError(StatusError):
    """ABORTED: the operation was aborted, e.g. by a concurrency conflict."""

    status = Code.ABORTED


class OutOfRangeError(StatusError):
    """OUT_OF_RANGE: an argument is outside the valid range."""

    status = Code.OUT_OF_RANGE


class UnimplementedError(StatusError):
    """UNIMPLEMENTED: the service or method is not served here."""

    status = Code.UNIMPLEMENTED


class InternalError(StatusError):
    """INTERNAL: an invariant of the server broke."""

    status = Code.INTERNAL


class UnavailableError(StatusError):
    """UNAVAILABLE: the service cannot be reached right now; retrying may help."""

    status = Code.UNAVAILABLE


class ConnectionClosedError(UnavailableError):
    """UNAVAILABLE: the connection was closed locally or lost, so the call cannot complete."""


class DataLossError(StatusError):
    """DATA_LOSS: unrecoverable data loss or corruption."""

    status = Code.DATA_LOSS


class UnauthenticatedError(StatusError):
    """UNAUTHENTICATED: the caller lacks valid credentials."""

    status = Code.UNAUTHENTICATED


_ERROR_TYPES: dict[int, type[StatusError]] = {
    cls.status: cls
    for cls in (
        CancelledCallError,
        UnknownError,
        InvalidArgumentError,
        DeadlineExceededError,
        NotFoundError,
        AlreadyExistsError,
        PermissionDeniedError,
        ResourceExhaustedError,
        FailedPreconditionError,
        AbortedError,
        OutOfRangeError,
        UnimplementedError,
        InternalError,
        UnavailableError,
        DataLossError,
        UnauthenticatedError,
    )
}


def error_for_status(code: int, message: str) -> RpcError:
    """The exception a client raises for a non-OK status; unknown codes become UNKNOWN.

    Raises:
        ValueError: ``code`` is OK (an OK status is not an error).
    """
    if code == Code.OK:
        raise ValueError("status OK is not an error")
    error_type = _ERROR_TYPES.get(code)
    if error_type is None:
        return UnknownError(f"unknown status code {code}: {message}")
    return error_type(message)


def status_for_exception(exc: BaseException) -> tuple[Code, str]:
    """The (code, message) a server answers when a handler raised ``exc``.

    RpcError keeps its code; ProtocolError (the peer sent something malformed) is
    INVALID_ARGUMENT; NotImplementedError is UNIMPLEMENTED; anything else is UNKNOWN.
    """
    if isinstance(exc, RpcError):
        try:
            code = Code(exc.code)
        except ValueError:
            return Code.UNKNOWN, f"unknown status code {exc.code}: {exc.message}"
        if code == Code.OK:
            return Code.UNKNOWN, f"handler raised an error with status OK: {exc.message}"
        return code, exc.message
    message = str(exc) or type(exc).__name__
    if isinstance(exc, ProtocolError):
        return Code.INVALID_ARGUMENT, message
    if isinstance(exc, NotImplementedError):
        return Code.UNIMPLEMENTED, message
    return Code.UNKNOWN, message

"""Map what a handler raises to the gRPC status the host sees (one line naming the problem)."""

from __future__ import annotations

import errno
import functools

from kata.errors import KataError, OciError, StateError
from kata.guest.runtime import errors as runtime_errors
from kata.ttrpc.status import (
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    StatusError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["ERRNO_STATUS", "RUNTIME_STATUS", "rpc", "to_status"]

ERRNO_STATUS: dict[int, type[StatusError]] = {
    errno.ENOENT: NotFoundError,
    errno.EEXIST: AlreadyExistsError,
    errno.EACCES: PermissionDeniedError,
    errno.EPERM: PermissionDeniedError,
    errno.EINVAL: InvalidArgumentError,
}


# Runtime errors whose code is not INTERNAL (OciError subclasses are INVALID_ARGUMENT already).
RUNTIME_STATUS: dict[type[BaseException], type[StatusError]] = {
    runtime_errors.ContainerNotFoundError: NotFoundError,
    runtime_errors.ProcessNotFoundError: NotFoundError,
    runtime_errors.ContainerExistsError: AlreadyExistsError,
    runtime_errors.ProcessExistsError: AlreadyExistsError,
    runtime_errors.RemoveTimeoutError: DeadlineExceededError,
    runtime_errors.TerminalError: FailedPreconditionError,
    runtime_errors.RuntimeClosedError: FailedPreconditionError,
    TimeoutError: DeadlineExceededError,
}


def to_status(method: str, exc: BaseException) -> StatusError:
    """The StatusError answering ``exc`` raised by ``method``."""
    if isinstance(exc, StatusError):
        return exc
    message = f"{method}: {exc}"
    if isinstance(exc, OciError):
        return InvalidArgumentError(message)
    if isinstance(exc, StateError):
        return FailedPreconditionError(message)
    for kind, status in RUNTIME_STATUS.items():
        if isinstance(exc, kind):
            return status(message)
    if isinstance(exc, KataError):
        return InternalError(message)
    if isinstance(exc, OSError):
        return ERRNO_STATUS.get(exc.errno or 0, InternalError)(message)
    return InternalError(f"{method}: {type(exc).__name__}: {exc}")


def rpc(method: str) -> Callable[[F], F]:
    """Decorate a handler so that whatever it raises reaches the host as a clear status."""
    def wrap(handler: F) -> F:
        @functools.wraps(handler)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            except Exception as exc:
                raise to_status(method, exc) from exc
        return run  # type: ignore[return-value]
    return wrap

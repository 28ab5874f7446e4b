"""gRPC status codes and the mapping between statuses and exceptions."""

from __future__ import annotations

import pytest

from kata.errors import KataError, ProtocolError, RpcError
from kata.ttrpc import (
    CancelledCallError,
    Code,
    ConnectionClosedError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    StatusError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
    error_for_status,
    status_for_exception,
)

STANDARD_CODES = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}


def test_all_seventeen_codes_have_their_standard_numbers() -> None:
    assert {code.name: code.value for code in Code} == STANDARD_CODES


@pytest.mark.parametrize("code", [code for code in Code if code != Code.OK])
def test_every_error_code_has_its_exception_and_round_trips(code: Code) -> None:
    error = error_for_status(code, "boom")
    assert isinstance(error, StatusError)
    assert isinstance(error, RpcError)
    assert isinstance(error, KataError)
    assert (error.code, error.message) == (code, "boom")
    assert str(error) == f"{code.name}: boom"
    assert status_for_exception(error) == (code, "boom")


def test_specific_classes() -> None:
    assert type(error_for_status(5, "x")) is NotFoundError
    assert type(error_for_status(12, "x")) is UnimplementedError
    assert type(error_for_status(1, "x")) is CancelledCallError
    assert type(error_for_status(16, "x")) is UnauthenticatedError
    assert issubclass(ConnectionClosedError, UnavailableError)
    assert ConnectionClosedError("gone").code == Code.UNAVAILABLE


def test_unknown_wire_code_becomes_unknown() -> None:
    error = error_for_status(99, "odd")
    assert type(error) is UnknownError
    assert error.message == "unknown status code 99: odd"


def test_ok_is_not_an_error() -> None:
    with pytest.raises(ValueError, match="OK"):
        error_for_status(0, "")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RpcError(Code.NOT_FOUND, "no container"), (Code.NOT_FOUND, "no container")),
        (RpcError(77, "strange"), (Code.UNKNOWN, "unknown status code 77: strange")),
        (RpcError(0, "ok?"), (Code.UNKNOWN, "handler raised an error with status OK: ok?")),
        (DeadlineExceededError("late"), (Code.DEADLINE_EXCEEDED, "late")),
        (InvalidArgumentError("bad"), (Code.INVALID_ARGUMENT, "bad")),
        (
            ProtocolError("stream 2: client stream ids must be odd"),
            (Code.INVALID_ARGUMENT, "stream 2: client stream ids must be odd"),
        ),
        (NotImplementedError("later"), (Code.UNIMPLEMENTED, "later")),
        (RuntimeError("kaboom"), (Code.UNKNOWN, "kaboom")),
        (KeyError(), (Code.UNKNOWN, "KeyError")),
    ],
)
def test_status_for_exception(exc: BaseException, expected: tuple[Code, str]) -> None:
    assert status_for_exception(exc) == expected

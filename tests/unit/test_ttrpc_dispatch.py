"""Server-side dispatch: registration, routing, request decoding, metadata and deadlines."""

from __future__ import annotations

import time

import pytest

from kata.protocols.pb import ttrpc_pb2
from kata.ttrpc import (
    CallContext,
    InternalError,
    InvalidArgumentError,
    MethodSpec,
    RequestReceived,
    Router,
    UnimplementedError,
    wire,
)

KeyValue = ttrpc_pb2.KeyValue
StringList = ttrpc_pb2.StringList


def echo(request: KeyValue, context: CallContext) -> StringList:
    return StringList(list=[request.key])


def router_with(methods: dict[str, MethodSpec]) -> Router:
    router = Router()
    router.register("grpc.AgentService", methods)
    return router


def received(method: str = "Echo", payload: bytes = b"", **fields: object) -> RequestReceived:
    request = ttrpc_pb2.Request(service="grpc.AgentService", method=method, payload=payload, **fields)  # type: ignore[arg-type]
    return RequestReceived(7, wire.Request.FromString(request.SerializeToString()))  # as the connection decodes it


def test_register_and_lookup() -> None:
    router = router_with({"Echo": (KeyValue, StringList, echo)})
    assert router.services == ("grpc.AgentService",)
    assert router.lookup("grpc.AgentService", "Echo") == (KeyValue, StringList, echo)
    with pytest.raises(UnimplementedError, match=r"unknown service grpc\.Health"):
        router.lookup("grpc.Health", "Check")
    with pytest.raises(UnimplementedError, match=r"unknown method grpc\.AgentService/Nope"):
        router.lookup("grpc.AgentService", "Nope")


@pytest.mark.parametrize(
    "methods",
    [
        {"": (KeyValue, StringList, echo)},
        {"Echo": (dict, StringList, echo)},
        {"Echo": (KeyValue, StringList, "not callable")},
    ],
)
def test_invalid_method_specs_are_refused(methods: dict[str, MethodSpec]) -> None:
    with pytest.raises(ValueError, match="invalid method spec"):
        router_with(methods)


def test_duplicate_service_is_refused() -> None:
    router = router_with({})
    with pytest.raises(ValueError, match="registered already"):
        router.register("grpc.AgentService", {})


def test_prepare_decodes_the_request_and_builds_the_context() -> None:
    router = router_with({"Echo": (KeyValue, StringList, echo)})
    call = router.prepare(received(payload=KeyValue(key="k").SerializeToString()))
    assert call.request == KeyValue(key="k")
    context = call.context
    assert (context.service, context.method, context.stream_id) == ("grpc.AgentService", "Echo", 7)
    assert context.full_method == "grpc.AgentService/Echo"
    assert (context.deadline, context.time_remaining(), context.metadata, context.cancelled) == (
        None,
        None,
        {},
        False,
    )
    assert call.encode(call.invoke()) == StringList(list=["k"]).SerializeToString()


def test_metadata_keys_are_lower_cased_and_values_grouped() -> None:
    router = router_with({"Echo": (KeyValue, StringList, echo)})
    metadata = [KeyValue(key="A", value="1"), KeyValue(key="b", value="2"), KeyValue(key="a", value="3")]
    call = router.prepare(received(metadata=metadata))
    assert call.context.metadata == {"a": ("1", "3"), "b": ("2",)}


def test_timeout_nano_becomes_a_deadline() -> None:
    router = router_with({"Echo": (KeyValue, StringList, echo)})
    before = time.monotonic()
    call = router.prepare(received(timeout_nano=2_000_000_000))
    assert call.context.deadline is not None
    assert before + 2.0 <= call.context.deadline <= time.monotonic() + 2.0
    remaining = call.context.time_remaining()
    assert remaining is not None and 1.5 < remaining <= 2.0
    expired = router.prepare(received(timeout_nano=-5))
    assert expired.context.time_remaining() == 0.0


def test_undecodable_payload_is_invalid_argument() -> None:
    router = router_with({"Echo": (KeyValue, StringList, echo)})
    with pytest.raises(InvalidArgumentError, match=r"grpc\.AgentService/Echo: cannot decode KeyValue"):
        router.prepare(received(payload=b"\xff"))


def test_wrong_result_type_is_internal() -> None:
    router = router_with({"Echo": (KeyValue, StringList, echo)})
    call = router.prepare(received())
    with pytest.raises(InternalError, match="handler returned KeyValue, expected StringList"):
        call.encode(KeyValue())
    with pytest.raises(InternalError, match="handler returned NoneType"):
        call.encode(None)

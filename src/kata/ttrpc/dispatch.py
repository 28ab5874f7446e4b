"""Server-side dispatch shared by both servers: the service registry, call context and request decoding."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf.message import DecodeError, Message

from kata.ttrpc.events import RequestReceived
from kata.ttrpc.status import InternalError, InvalidArgumentError, UnimplementedError

__all__ = ["CallContext", "Handler", "MethodSpec", "PreparedCall", "Router", "call_context"]

# A handler takes the decoded request and the call's context and returns the
# response message; on the asyncio server it may instead return an awaitable of it.
Handler = Callable[[Any, "CallContext"], Any]
MethodSpec = tuple[type[Message], type[Message], Handler]

_NO_METADATA: Mapping[str, tuple[str, ...]] = {}


class CallContext:
    """What a handler learns about its call besides the request message.

    ``metadata`` maps lower-cased keys to their values in arrival order. ``deadline``
    is a :func:`time.monotonic` instant or None. The server sets ``cancelled`` when
    the deadline passed or the peer went away; blocking handlers may poll it.
    """

    __slots__ = ("cancelled", "deadline", "metadata", "method", "service", "stream_id")

    def __init__(
        self,
        service: str,
        method: str,
        *,
        stream_id: int = 0,
        metadata: Mapping[str, tuple[str, ...]] = _NO_METADATA,
        deadline: float | None = None,
    ) -> None:
        self.service = service
        self.method = method
        self.stream_id = stream_id
        self.metadata = metadata
        self.deadline = deadline
        self.cancelled = False

    @property
    def full_method(self) -> str:
        """``service/method``, as used in error messages."""
        return f"{self.service}/{self.method}"

    def time_remaining(self) -> float | None:
        """Seconds left before the deadline (0.0 once passed), or None without a deadline."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())


class PreparedCall:
    """A routed request: its handler, decoded request message and context."""

    __slots__ = ("context", "handler", "request", "response_type")

    def __init__(
        self, handler: Handler, request: Message, response_type: type[Message], context: CallContext
    ):
        self.handler = handler
        self.request = request
        self.response_type = response_type
        self.context = context

    def invoke(self) -> Any:
        """Run the handler; whatever it raises propagates."""
        return self.handler(self.request, self.context)

    def encode(self, result: object) -> bytes:
        """The serialized response payload.

        Raises:
            InternalError: the handler returned something other than its response type.
        """
        if not isinstance(result, self.response_type):
            raise InternalError(
                f"{self.context.full_method}: handler returned {type(result).__name__}, "
                f"expected {self.response_type.__name__}"
            )
        return result.SerializeToString()


class Router:
    """Services registered by full name (e.g. ``grpc.AgentService``), each a table of methods."""

    __slots__ = ("_services",)

    def __init__(self) -> None:
        self._services: dict[str, dict[str, MethodSpec]] = {}

    @property
    def services(self) -> tuple[str, ...]:
        """Names of the registered services."""
        return tuple(self._services)

    def register(self, service: str, methods: Mapping[str, MethodSpec]) -> None:
        """Serve ``methods`` (``{name: (request_cls, response_cls, handler)}``) as ``service``.

        Raises:
            ValueError: the service is registered already, or a name or method spec is invalid.
        """
        if not service or service in self._services:
            raise ValueError(f"service {service!r} is empty or registered already")
        for name, spec in methods.items():
            request_type, response_type, handler = spec
            valid_types = all(
                isinstance(t, type) and issubclass(t, Message) for t in (request_type, response_type)
            )
            if not name or not valid_types or not callable(handler):
                raise ValueError(f"{service}/{name}: invalid method spec {spec!r}")
        self._services[service] = dict(methods)

    def lookup(self, service: str, method: str) -> MethodSpec:
        """The spec serving ``service/method``.

        Raises:
            UnimplementedError: no such service or method.
        """
        methods = self._services.get(service)
        if methods is None:
            raise UnimplementedError(f"unknown service {service}")
        spec = methods.get(method)
        if spec is None:
            raise UnimplementedError(f"unknown method {service}/{method}")
        return spec

    def prepare(self, event: RequestReceived) -> PreparedCall:
        """Route a received request and decode its payload; the deadline starts now.

        Raises:
            UnimplementedError: no such service or method.
            InvalidArgumentError: the payload does not decode as the method's request type.
        """
        request = event.request
        request_type, response_type, handler = self.lookup(request.service, request.method)
        try:
            message = request_type.FromString(request.payload)
        except DecodeError as exc:
            raise InvalidArgumentError(
                f"{request.service}/{request.method}: cannot decode {request_type.__name__}: {exc}"
            ) from exc
        return PreparedCall(handler, message, response_type, call_context(event))


def call_context(event: RequestReceived) -> CallContext:
    """The context of a received request: its metadata, and its deadline (which starts now)."""
    request = event.request
    metadata = _NO_METADATA
    if request.metadata:
        collected: dict[str, tuple[str, ...]] = {}
        for pair in request.metadata:
            key = pair.key.lower()
            collected[key] = (*collected.get(key, ()), pair.value)
        metadata = collected
    timeout_nano = request.timeout_nano
    deadline = time.monotonic() + timeout_nano / 1e9 if timeout_nano else None
    return CallContext(
        request.service, request.method, stream_id=event.stream_id, metadata=metadata, deadline=deadline
    )

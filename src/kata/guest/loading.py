"""Serve grpc.Health at once and everything else once it is imported, in the background.

Under TCG every import is slow: the agent's services, the runtime, kata.oci and the agent protos
take about a second. The host's first call is Health.Check, which needs none of them, so PID 1
answers it with a router that holds only Health, then imports the rest in a thread. Calls that
arrive for a service still loading wait for it (within their own deadline).
"""

from __future__ import annotations

import sys
import threading
import time

from google.protobuf.message import Message

from kata.ttrpc.dispatch import PreparedCall, Router, call_context
from kata.ttrpc.status import DeadlineExceededError, InternalError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from kata.guest.log import GuestLog
    from kata.ttrpc.dispatch import CallContext, MethodSpec
    from kata.ttrpc.events import RequestReceived

__all__ = ["IDLE_START", "LOADING_SWITCH_INTERVAL", "DeferredRouter"]

# Loading starts once the first call has been answered, or after this long without one.
IDLE_START = 0.05
# While the loader thread imports, the serving thread gets the GIL back this fast (default 5 ms).
LOADING_SWITCH_INTERVAL = 0.0005


class _DeferredCall(PreparedCall):
    """A call to a service still loading: :meth:`invoke` waits for it, then routes and decodes."""

    __slots__ = ("_event", "_router")

    def __init__(self, router: DeferredRouter, event: RequestReceived, context: CallContext) -> None:
        # Placeholders until invoke(): the real handler, message and response type are not known yet.
        super().__init__(_unrouted, Message(), Message, context)
        self._router = router
        self._event = event

    def invoke(self) -> Any:
        full = self._router.wait_loaded(self.context)
        call = full.prepare(self._event)  # raises UNIMPLEMENTED / INVALID_ARGUMENT as usual
        self.handler, self.request, self.response_type = call.handler, call.request, call.response_type
        return self.handler(self.request, self.context)


class _TimedCall(PreparedCall):
    """A call whose duration in the agent is logged at debug level (``msg=rpc method=... ms=...``)."""

    __slots__ = ("_call", "_log")

    def __init__(self, call: PreparedCall, log: GuestLog) -> None:
        super().__init__(call.handler, call.request, call.response_type, call.context)
        self._call = call
        self._log = log

    def invoke(self) -> Any:
        started = time.monotonic()
        outcome = "error"
        try:
            result = self._call.invoke()
            outcome = "ok"
            return result
        finally:
            self._log.debug("rpc", method=self.context.method, outcome=outcome,
                            ms=round((time.monotonic() - started) * 1000, 1))

    def encode(self, result: object) -> bytes:
        return self._call.encode(result)


def _unrouted(request: Any, context: CallContext) -> Any:
    raise AssertionError(f"{context.full_method} ran before it was routed")


class DeferredRouter(Router):
    """Serves the services registered on it now; every other call waits for :meth:`load`'s router.

    Once loaded, the full router answers everything (it must serve the early services too).
    """

    __slots__ = ("_error", "_full", "_loaded", "_log", "_started", "_trigger")

    def __init__(self, log: GuestLog) -> None:
        super().__init__()
        self._log = log
        self._full: Router | None = None
        self._error: BaseException | None = None
        self._loaded = threading.Event()
        self._trigger = threading.Event()
        self._started = False

    def register(self, service: str, methods: Mapping[str, MethodSpec]) -> None:
        """Serve ``methods`` at once; answering one of them lets the background loading begin."""
        super().register(service, {name: (request, response, self._triggering(handler))
                                   for name, (request, response, handler) in methods.items()})

    def _triggering(self, handler: Callable[[Any, CallContext], Any]) -> Callable[[Any, CallContext], Any]:
        def run(request: Any, context: CallContext) -> Any:
            try:
                return handler(request, context)
            finally:
                self._trigger.set()
        return run

    def load(self, build: Callable[[], Router]) -> None:
        """Run ``build`` in a thread, once the first call is answered or :data:`IDLE_START` passed."""
        if self._started:
            raise RuntimeError("the router is loading already")
        self._started = True
        threading.Thread(target=self._load, args=(build,), name="agent-loader", daemon=True).start()

    def _load(self, build: Callable[[], Router]) -> None:
        self._trigger.wait(IDLE_START)
        started = time.monotonic()
        interval = sys.getswitchinterval()
        sys.setswitchinterval(LOADING_SWITCH_INTERVAL)
        try:
            self._full = build()
        except BaseException as exc:  # a broken image: every deferred call says so
            self._error = exc
            self._log.error("agent services failed to load", error=f"{type(exc).__name__}: {exc}")
        else:
            self._log.info("agent services loaded", ms=round((time.monotonic() - started) * 1000, 1),
                           modules=len(sys.modules))
        finally:
            sys.setswitchinterval(interval)
            self._loaded.set()

    @property
    def loaded(self) -> bool:
        """Whether loading has finished (successfully or not)."""
        return self._loaded.is_set()

    def wait_loaded(self, context: CallContext) -> Router:
        """The full router, waiting for it within the call's deadline.

        Raises:
            DeadlineExceededError: when the deadline passes first.
            InternalError: when loading failed (a broken image).
        """
        self._trigger.set()  # a call for the rest: no reason to wait for an idle moment
        if not self._loaded.wait(context.time_remaining()):
            raise DeadlineExceededError(f"{context.full_method}: the agent is still starting")
        if self._full is None:
            raise InternalError(f"{context.full_method}: the agent's services failed to load: {self._error}")
        return self._full

    def prepare(self, event: RequestReceived) -> PreparedCall:
        """Route through the full router once loaded; before that, early services or a waiting call.

        Raises:
            UnimplementedError, InvalidArgumentError: as :meth:`Router.prepare`.
        """
        call = self._route(event)
        return _TimedCall(call, self._log) if self._log.enabled("debug") else call

    def _route(self, event: RequestReceived) -> PreparedCall:
        if self._full is not None:
            return self._full.prepare(event)
        if event.request.service in self.services:
            return super().prepare(event)
        self._trigger.set()
        return _DeferredCall(self, event, call_context(event))

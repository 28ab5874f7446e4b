"""RemotePublisher: Events/Forward in publishing order, retried across failures and reconnects."""

from __future__ import annotations

import asyncio
from pathlib import Path

from google.protobuf import empty_pb2

from kata.protocols.events import unpack_event_name
from kata.protocols.pb import events_service_pb2, events_task_pb2
from kata.protocols.services import EVENTS_SERVICE
from kata.shim.publisher import MemoryPublisher, RemotePublisher
from kata.ttrpc.aio import AsyncClient, AsyncServer, connect_unix
from kata.ttrpc.dispatch import CallContext, Router
from kata.ttrpc.status import UnavailableError


class FakeContainerd:
    """containerd's events service: records envelopes, refuses the first ``failures`` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0
        self.received: list[events_service_pb2.Envelope] = []

    def forward(self, request: events_service_pb2.ForwardRequest, context: CallContext) -> empty_pb2.Empty:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise UnavailableError("busy")
        self.received.append(request.envelope)
        return empty_pb2.Empty()

    def router(self) -> Router:
        router = Router()
        router.register(EVENTS_SERVICE, {"Forward": (events_service_pb2.ForwardRequest, empty_pb2.Empty,
                                                     self.forward)})
        return router


def test_events_arrive_in_order_with_namespace_topic_and_bare_type_urls(tmp_path: Path) -> None:
    containerd = FakeContainerd(failures=2)
    socket = str(tmp_path / "ttrpc.sock")

    async def scenario() -> None:
        async with AsyncServer(containerd.router()) as server:
            await server.listen_unix(socket)
            publisher = RemotePublisher(socket, "k8s.io", backoff=0.01)
            publisher.publish("/tasks/create", events_task_pb2.TaskCreate(container_id="c1"))
            publisher.publish("/tasks/start", events_task_pb2.TaskStart(container_id="c1", pid=7))
            publisher.publish("/tasks/exit", events_task_pb2.TaskExit(container_id="c1", exit_status=3))
            await publisher.close(timeout=5)

    asyncio.run(scenario())
    assert [e.topic for e in containerd.received] == ["/tasks/create", "/tasks/start", "/tasks/exit"]
    assert containerd.calls == 5  # the first event took three tries; the others waited behind it
    assert {e.namespace for e in containerd.received} == {"k8s.io"}
    assert [unpack_event_name(e.event) for e in containerd.received] == [
        "containerd.events.TaskCreate", "containerd.events.TaskStart", "containerd.events.TaskExit"]
    assert containerd.received[0].event.type_url == "containerd.events.TaskCreate"
    assert events_task_pb2.TaskExit.FromString(containerd.received[2].event.value).exit_status == 3


def test_a_containerd_that_is_not_there_yet_is_retried_then_the_event_is_dropped(tmp_path: Path) -> None:
    containerd = FakeContainerd()
    socket = str(tmp_path / "ttrpc.sock")
    dials = 0

    async def scenario() -> None:
        server = AsyncServer(containerd.router())

        async def connect(address: str) -> AsyncClient:
            nonlocal dials
            dials += 1
            if dials == 2:  # containerd comes up after the first failed dial
                await server.listen_unix(socket)
            return await connect_unix(address)

        publisher = RemotePublisher(socket, "default", connect=connect, backoff=0.01, max_attempts=3)
        publisher.publish("/tasks/exit", events_task_pb2.TaskExit(container_id="late"))
        await publisher.close(timeout=5)
        await server.close()
        gone = RemotePublisher(str(tmp_path / "nobody.sock"), "default", backoff=0.01, max_attempts=2)
        gone.publish("/tasks/exit", events_task_pb2.TaskExit(container_id="lost"))
        gone.publish("/tasks/delete", events_task_pb2.TaskDelete(container_id="lost"))
        await gone.close(timeout=5)  # both dropped after two tries each; close still returns

    asyncio.run(scenario())
    assert dials == 2
    assert [e.topic for e in containerd.received] == ["/tasks/exit"]


def test_memory_publisher_keeps_topics() -> None:
    publisher = MemoryPublisher()
    publisher.publish("/tasks/oom", events_task_pb2.TaskOOM(container_id="c"))
    asyncio.run(publisher.close())
    assert publisher.topics == ["/tasks/oom"]

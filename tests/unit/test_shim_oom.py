"""TaskOOM end to end without a VM: a fake agent's GetOOMEvent answers, through the sandbox library's
OomWatcher, become TaskOOM events of the shim (this host has no memory controller to OOM-kill for real)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from kata.config import Config
from kata.errors import KataError
from kata.oci import Bundle
from kata.protocols.pb import events_task_pb2, shim_task_pb2
from kata.sandbox.oom import OomWatcher
from kata.shim.publisher import MemoryPublisher
from kata.shim.service import TaskService
from tests.unit.test_shim_service import FakeSandbox, Harness


class OomAgent:
    """GetOOMEvent: each queued container id in turn, then the connection is gone."""

    def __init__(self, *container_ids: str) -> None:
        self.events = asyncio.Queue[str]()
        for container_id in container_ids:
            self.events.put_nowait(container_id)

    async def get_oom_event(self) -> str:
        if self.events.empty():
            raise KataError("agent connection closed")
        return await self.events.get()


class OomSandbox(FakeSandbox):
    """The fake sandbox, with OOM callbacks from a real OomWatcher over the fake agent."""

    def __init__(self, sandbox_id: str, agent: OomAgent) -> None:
        super().__init__(sandbox_id)
        self.watcher = OomWatcher(agent, sandbox_id)

    def on_oom(self, callback: Callable[[str], None]) -> Callable[[], None]:
        return self.watcher.subscribe(callback)

    async def delete(self) -> None:
        await self.watcher.stop()
        await super().delete()


def test_guest_oom_kills_reach_containerd_as_task_oom(tmp_path: Path) -> None:
    publisher = MemoryPublisher()
    sandboxes: list[OomSandbox] = []

    async def factory(config: Config, sandbox_id: str, bundle: Bundle) -> OomSandbox:
        sandbox = OomSandbox(sandbox_id, OomAgent("c1", "gone-already", "c1"))
        sandboxes.append(sandbox)
        return sandbox

    async def scenario() -> None:
        service = TaskService(publisher, factory=factory)
        harness = Harness(tmp_path)
        await service.create(shim_task_pb2.CreateTaskRequest(id="c1", bundle=harness.bundle("c1")))
        await service.start(shim_task_pb2.StartRequest(id="c1"))
        for _ in range(20):
            await asyncio.sleep(0)
        sandboxes[0].containers["c1"].finish(137)
        await service.wait(shim_task_pb2.WaitRequest(id="c1"))
        await service.delete(shim_task_pb2.DeleteRequest(id="c1"))

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert publisher.topics == ["/tasks/create", "/tasks/start", "/tasks/oom", "/tasks/oom", "/tasks/exit",
                                "/tasks/delete"]
    oom = [event for _, event in publisher.events if isinstance(event, events_task_pb2.TaskOOM)]
    assert [event.container_id for event in oom] == ["c1", "c1"]  # not the unknown container's

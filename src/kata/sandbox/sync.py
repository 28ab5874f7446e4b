"""The blocking API: Sandbox, Container and Exec run the async core on an event loop in a thread."""

from __future__ import annotations

import asyncio
import os
import signal as signals
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType
from typing import BinaryIO, TypeVar

from kata.agent.types import Interface, Route
from kata.config import Config, LoadedConfig
from kata.oci import Bundle, Process, Resources
from kata.sandbox.container import AsyncContainer
from kata.sandbox.oom import OomCallback
from kata.sandbox.paths import VM_LAYOUT, GuestLayout, SandboxPaths
from kata.sandbox.process import AsyncExec
from kata.sandbox.records import ContainerRecord
from kata.sandbox.sandbox import AsyncSandbox
from kata.sandbox.states import ContainerState, SandboxState
from kata.sandbox.stats import ContainerStats
from kata.sandbox.stdio import StdinTarget, StdoutTarget
from kata.sandbox.timeline import Timeline

__all__ = ["Container", "Exec", "LoopThread", "Sandbox"]

T = TypeVar("T")


class LoopThread:
    """An asyncio event loop running in a daemon thread; :meth:`run` executes a coroutine there."""

    def __init__(self, name: str = "kata-sandbox") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, awaitable: Awaitable[T], timeout: float | None = None) -> T:
        """Run ``awaitable`` on the loop and return its result (its exceptions propagate).

        Raises:
            TimeoutError: ``timeout`` seconds passed (the call is cancelled).
            RuntimeError: called from the loop's own thread, or after close.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("the sync sandbox API was called from its own event loop: use the async API")
        if self.loop.is_closed():
            raise RuntimeError("the sandbox's event loop is closed")
        future = asyncio.run_coroutine_threadsafe(_coroutine(awaitable), self.loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"no result within {timeout:g} s") from None
        except BaseException:  # KeyboardInterrupt while waiting: do not leave the call running
            future.cancel()
            raise

    def close(self) -> None:
        """Cancel what still runs on the loop, stop it and join the thread (idempotent)."""
        if self.loop.is_closed():
            return
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop).result()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        self.loop.close()


async def _coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def _cancel_all() -> None:
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class Exec:
    """Blocking view of :class:`AsyncExec`."""

    def __init__(self, inner: AsyncExec, loop: LoopThread) -> None:
        self._inner = inner
        self._loop = loop
        self.stdin: BinaryIO | None = inner.stdin
        self.stdout: BinaryIO | None = inner.stdout
        self.stderr: BinaryIO | None = inner.stderr

    @property
    def exec_id(self) -> str:
        """See :attr:`AsyncExec.exec_id`."""
        return self._inner.exec_id

    @property
    def exit_status(self) -> int | None:
        """See :attr:`AsyncExec.exit_status`."""
        return self._inner.exit_status

    def wait(self, timeout: float | None = None) -> int:
        """See :meth:`AsyncExec.wait`; also raises TimeoutError after ``timeout`` s."""
        return self._loop.run(self._inner.wait(), timeout)

    def kill(self, signal: int = signals.SIGTERM) -> None:
        """See :meth:`AsyncExec.kill`."""
        self._loop.run(self._inner.kill(signal))

    def resize(self, rows: int, columns: int) -> None:
        """See :meth:`AsyncExec.resize`."""
        self._loop.run(self._inner.resize(rows, columns))

    def close_stdin(self) -> None:
        """See :meth:`AsyncExec.close_stdin`."""
        self._loop.run(self._inner.close_stdin())


class Container:
    """Blocking view of :class:`AsyncContainer` (same verbs, same errors)."""

    def __init__(self, inner: AsyncContainer, loop: LoopThread) -> None:
        self.inner = inner
        self._loop = loop
        self.stdin: BinaryIO | None = inner.stdin
        self.stdout: BinaryIO | None = inner.stdout
        self.stderr: BinaryIO | None = inner.stderr

    @property
    def id(self) -> str:
        """The container id."""
        return self.inner.id

    @property
    def state(self) -> ContainerState:
        """The lifecycle state."""
        return self.inner.state

    @property
    def exit_status(self) -> int | None:
        """The init process's exit status once waited for."""
        return self.inner.exit_status

    @property
    def record(self) -> ContainerRecord:
        """The container's state.json record."""
        return self.inner.record

    def start(self) -> None:
        """See :meth:`AsyncContainer.start`."""
        self._loop.run(self.inner.start())

    def wait(self, timeout: float | None = None) -> int:
        """See :meth:`AsyncContainer.wait`; also raises TimeoutError after ``timeout`` s."""
        return self._loop.run(self.inner.wait(), timeout)

    def kill(self, signal: int = signals.SIGTERM, *, all_processes: bool = False) -> None:
        """See :meth:`AsyncContainer.kill`."""
        self._loop.run(self.inner.kill(signal, all_processes=all_processes))

    def exec(self, command: Sequence[str] | Process, *, exec_id: str | None = None, terminal: bool = False,
             env: Sequence[str] | None = None, cwd: str | None = None, stdin: StdinTarget = None,
             stdout: StdoutTarget = None, stderr: StdoutTarget = None) -> Exec:
        """See :meth:`AsyncContainer.exec`."""
        inner = self._loop.run(self.inner.exec(command, exec_id=exec_id, terminal=terminal, env=env, cwd=cwd,
                                               stdin=stdin, stdout=stdout, stderr=stderr))
        return Exec(inner, self._loop)

    def pause(self) -> None:
        """See :meth:`AsyncContainer.pause`."""
        self._loop.run(self.inner.pause())

    def resume(self) -> None:
        """See :meth:`AsyncContainer.resume`."""
        self._loop.run(self.inner.resume())

    def stats(self) -> ContainerStats:
        """See :meth:`AsyncContainer.stats`."""
        return self._loop.run(self.inner.stats())

    def update(self, resources: Resources) -> None:
        """See :meth:`AsyncContainer.update`."""
        self._loop.run(self.inner.update(resources))

    def resize(self, rows: int, columns: int) -> None:
        """See :meth:`AsyncContainer.resize`."""
        self._loop.run(self.inner.resize(rows, columns))

    def close_stdin(self) -> None:
        """See :meth:`AsyncContainer.close_stdin`."""
        self._loop.run(self.inner.close_stdin())

    def delete(self, *, force: bool = False) -> None:
        """See :meth:`AsyncContainer.delete`."""
        self._loop.run(self.inner.delete(force=force))


class Sandbox:
    """Blocking view of :class:`AsyncSandbox`: ``with Sandbox.create(config) as sb:`` deletes it at the end.

    Its coroutines run on an event loop in a thread of its own; callbacks (``on_oom``) run there too.
    """

    def __init__(self, inner: AsyncSandbox, loop: LoopThread) -> None:
        self.inner = inner
        self._loop = loop
        self._vm_survives = True

    @classmethod
    def create(cls, config: Config | LoadedConfig | None = None, *, sandbox_id: str | None = None,
               root: str | os.PathLike[str] | None = None, hostname: str = "", dns: Sequence[str] = (),
               guest: GuestLayout = VM_LAYOUT, start_timeout: float = 30.0, netns: str | None = None) -> Sandbox:
        """See :meth:`AsyncSandbox.create` (same arguments, same errors)."""
        return cls._open(lambda: AsyncSandbox.create(config, sandbox_id=sandbox_id, root=root, hostname=hostname,
                                                     dns=dns, guest=guest, start_timeout=start_timeout,
                                                     netns=netns))

    @classmethod
    def load(cls, sandbox_id: str, *, root: str | os.PathLike[str] | None = None,
             dial_timeout: float = 10.0, connect: bool = True) -> Sandbox:
        """See :meth:`AsyncSandbox.load`."""
        return cls._open(lambda: AsyncSandbox.load(sandbox_id, root=root, dial_timeout=dial_timeout,
                                                   connect=connect))

    @classmethod
    def _open(cls, make: Callable[[], Awaitable[AsyncSandbox]]) -> Sandbox:
        loop = LoopThread()
        try:
            return cls(loop.run(make()), loop)
        except BaseException:
            loop.close()
            raise

    @property
    def sandbox_id(self) -> str:
        """The sandbox id."""
        return self.inner.sandbox_id

    @property
    def state(self) -> SandboxState:
        """The lifecycle state."""
        return self.inner.state

    @property
    def paths(self) -> SandboxPaths:
        """Where its state files are."""
        return self.inner.paths

    @property
    def pids(self) -> tuple[int, ...]:
        """See :attr:`AsyncSandbox.pids`."""
        return self.inner.pids

    @property
    def containers(self) -> dict[str, Container]:
        """The containers by id."""
        return {cid: Container(c, self._loop) for cid, c in self.inner.containers.items()}

    def create_container(self, bundle: str | os.PathLike[str] | Bundle, *, container_id: str | None = None,
                         stdin: StdinTarget = None, stdout: StdoutTarget = None,
                         stderr: StdoutTarget = None) -> Container:
        """See :meth:`AsyncSandbox.create_container`."""
        inner = self._loop.run(self.inner.create_container(bundle, container_id=container_id, stdin=stdin,
                                                           stdout=stdout, stderr=stderr))
        return Container(inner, self._loop)

    def container(self, container_id: str) -> Container:
        """See :meth:`AsyncSandbox.container`."""
        return Container(self.inner.container(container_id), self._loop)

    def add_interface(self, name: str) -> Interface:
        """See :meth:`AsyncSandbox.add_interface`."""
        return self._loop.run(self.inner.add_interface(name))

    def remove_interface(self, name: str) -> None:
        """See :meth:`AsyncSandbox.remove_interface`."""
        self._loop.run(self.inner.remove_interface(name))

    def list_interfaces(self) -> tuple[Interface, ...]:
        """See :meth:`AsyncSandbox.list_interfaces`."""
        return self._loop.run(self.inner.list_interfaces())

    def list_routes(self) -> tuple[Route, ...]:
        """See :meth:`AsyncSandbox.list_routes`."""
        return self._loop.run(self.inner.list_routes())

    def pause(self) -> None:
        """See :meth:`AsyncSandbox.pause`."""
        self._loop.run(self.inner.pause())

    def resume(self) -> None:
        """See :meth:`AsyncSandbox.resume`."""
        self._loop.run(self.inner.resume())

    def on_oom(self, callback: OomCallback) -> Callable[[], None]:
        """See :meth:`AsyncSandbox.on_oom` (``callback`` runs in the sandbox's loop thread)."""
        async def subscribe() -> Callable[[], None]:
            return self.inner.on_oom(callback)
        return self._loop.run(subscribe())

    def timeline(self) -> Timeline:
        """See :meth:`AsyncSandbox.timeline`."""
        return self.inner.timeline()

    def delete(self) -> None:
        """See :meth:`AsyncSandbox.delete`; then the loop thread ends."""
        try:
            self._loop.run(self.inner.delete())
        finally:
            self._loop.close()

    def detach(self) -> bool:
        """See :meth:`AsyncSandbox.detach`; the loop thread ends unless the VM still depends on this process."""
        self._vm_survives = self._loop.run(self.inner.detach())
        if self._vm_survives:
            self._loop.close()
        return self._vm_survives

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.inner.state is not SandboxState.DETACHED:
            self.delete()
        elif self._vm_survives:
            self._loop.close()


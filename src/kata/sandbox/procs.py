"""Host processes that are not our children (another process's VMM): identity, signals, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Sequence

from kata.hypervisor.process import proc_stat
from kata.sandbox.records import ProcessRef

__all__ = ["is_alive", "process_ref", "send_signal", "terminate", "wait_gone"]


def process_ref(pid: int) -> ProcessRef | None:
    """The live process ``pid`` with its start time, or None when there is none."""
    found = proc_stat(pid)
    return None if found is None or found[0] == "Z" else ProcessRef(pid, found[1])


def is_alive(ref: ProcessRef) -> bool:
    """Whether the very process ``ref`` names still runs (a zombie or a reused pid does not count)."""
    return process_ref(ref.pid) == ref


def send_signal(ref: ProcessRef, signum: int) -> bool:
    """Signal exactly ``ref`` (through a pidfd, so a reused pid is never hit); whether it was sent."""
    try:
        fd = os.pidfd_open(ref.pid)
    except OSError:
        return False
    try:
        if not is_alive(ref):
            return False
        signal.pidfd_send_signal(fd, signum)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _gone(ref: ProcessRef) -> None:
    try:
        fd = os.pidfd_open(ref.pid)
    except OSError:
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    try:
        if not is_alive(ref):
            return
        loop.add_reader(fd, _wake, done)
        try:
            await done
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


async def wait_gone(refs: Sequence[ProcessRef], timeout: float) -> bool:
    """Wait until every process in ``refs`` has ended (pidfds: they need not be our children).

    Returns whether they all did within ``timeout`` seconds.
    """
    if not refs:
        return True
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(_gone(ref) for ref in refs))
    except TimeoutError:
        return False
    return True


async def terminate(refs: Sequence[ProcessRef], grace: float) -> None:
    """SIGTERM ``refs``, then SIGKILL whatever is left after ``grace`` s, and wait for them."""
    for ref in refs:
        send_signal(ref, signal.SIGTERM)
    if not await wait_gone(refs, grace):
        for ref in refs:
            send_signal(ref, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        with contextlib.suppress(TimeoutError):
            await wait_gone(refs, max(0.0, deadline - time.monotonic()))

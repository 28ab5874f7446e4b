"""Stdio relays against a scripted agent: exact EOF forwarding, stdin copying, full pipes, OOM callbacks."""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from kata.errors import KataError
from kata.sandbox import PIPE, OutputBuffer
from kata.sandbox.oom import OomWatcher
from kata.sandbox.relay import ProcessIo, relay_input, relay_output
from kata.sandbox.stdio import BytesSource, FdSink, FdSource, open_stdio
from kata.ttrpc.status import ConnectionClosedError, DeadlineExceededError

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro
    return asyncio.run(main())


def reader(*chunks: bytes) -> Callable[[], Awaitable[bytes]]:
    queue = deque(chunks)

    async def read() -> bytes:
        await asyncio.sleep(0)
        return queue.popleft() if queue else b""
    return read


def test_output_reaches_a_pipe_and_eof_follows_the_last_byte() -> None:
    read_end, write_end = os.pipe()
    run(relay_output(reader(b"one ", b"two"), FdSink(write_end)))
    with os.fdopen(read_end, "rb") as fh:
        assert fh.read() == b"one two"  # read() returns: the relay closed its end exactly at EOF


def test_a_full_pipe_does_not_block_the_event_loop() -> None:
    read_end, write_end = os.pipe()
    big = b"x" * (1 << 20)
    ticks = 0

    async def scenario() -> bytes:
        nonlocal ticks
        relay = asyncio.ensure_future(relay_output(reader(big), FdSink(write_end)))
        for _ in range(5):
            await asyncio.sleep(0.01)
            ticks += 1
        assert not relay.done()  # nobody reads yet: the relay waits, the loop runs
        data = await asyncio.to_thread(os.read, read_end, 1)
        collected = [data]
        while chunk := await asyncio.to_thread(os.read, read_end, 1 << 16):
            collected.append(chunk)
        await relay
        return b"".join(collected)
    assert run(scenario()) == big and ticks == 5
    os.close(read_end)


def test_a_gone_reader_makes_the_rest_be_discarded() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    run(relay_output(reader(b"a", b"b"), FdSink(write_end)))  # no EPIPE escapes


def test_input_is_copied_then_stdin_closed() -> None:
    written: list[bytes] = []
    closed: list[bool] = []

    async def write(data: bytes) -> int:
        written.append(data)
        return len(data)

    async def close() -> None:
        closed.append(True)
    read_end, write_end = os.pipe()
    os.write(write_end, b"line 1\n")
    os.close(write_end)
    run(relay_input(FdSource(read_end), write, close))
    run(relay_input(BytesSource(b"bytes"), write, close))
    assert (written, closed) == ([b"line 1\n", b"bytes"], [True, True])


class ScriptedAgent:
    """The stream calls of AgentClient, answering from a script."""

    def __init__(self, stdout: list[bytes], stderr: list[bytes], fail: BaseException | None = None) -> None:
        self.out = reader(*stdout)
        self.err = reader(*stderr)
        self.fail = fail
        self.stdin: list[bytes] = []
        self.calls: list[str] = []

    async def read_stdout(self, cid: str, eid: str) -> bytes:
        if self.fail is not None:
            raise self.fail
        return await self.out()

    async def read_stderr(self, cid: str, eid: str) -> bytes:
        return await self.err()

    async def write_stdin(self, cid: str, eid: str, data: bytes) -> int:
        self.stdin.append(data)
        return len(data)

    async def close_stdin(self, cid: str, eid: str) -> None:
        self.calls.append("close_stdin")


def process_io(agent: ScriptedAgent, terminal: bool = False, **stdio: Any) -> ProcessIo:
    return ProcessIo(agent, "c", "e", open_stdio(**stdio), terminal=terminal)  # type: ignore[arg-type]


def test_process_io_relays_every_stream_and_closes_a_missing_stdin() -> None:
    agent = ScriptedAgent([b"out"], [b"err"])
    out, err = OutputBuffer(), OutputBuffer()

    async def scenario() -> bool:
        io = process_io(agent, stdout=out, stderr=err)
        io.start()
        return await io.drain(5)
    assert run(scenario())
    assert (out.getvalue(), err.getvalue(), out.eof, err.eof) == (b"out", b"err", True, True)
    assert agent.calls == ["close_stdin"]


def test_terminal_has_one_output_and_keeps_stdin_open() -> None:
    agent = ScriptedAgent([b"tty"], [b"never read"])
    out, err = OutputBuffer(), OutputBuffer()

    async def scenario() -> None:
        io = process_io(agent, terminal=True, stdin=b"ls\n", stdout=out, stderr=err)
        io.start()
        await io.drain(5)
        await asyncio.sleep(0.01)
    run(scenario())
    assert (out.getvalue(), err.getvalue(), err.eof) == (b"tty", b"", True)
    assert (agent.stdin, agent.calls) == ([b"ls\n"], ["close_stdin"])


def test_a_broken_agent_stream_ends_the_relay_with_eof() -> None:
    agent = ScriptedAgent([], [], fail=ConnectionClosedError("gone"))

    async def scenario() -> bytes:
        io = process_io(agent, stdout=PIPE)
        assert io.stdio.stdout_pipe is not None
        io.start()
        await io.drain(5)
        return io.stdio.stdout_pipe.read()
    assert run(scenario()) == b""


def test_drain_cuts_streams_that_stay_open() -> None:
    class Hanging(ScriptedAgent):
        async def read_stdout(self, cid: str, eid: str) -> bytes:
            await asyncio.sleep(3600)
            return b""

    async def scenario() -> bool:
        io = process_io(Hanging([], []))
        io.start()
        return await io.drain(0.05)
    assert run(scenario()) is False


def test_open_stdio_dups_fds_and_makes_pipes() -> None:
    read_end, write_end = os.pipe()
    stdio = open_stdio(stdin=PIPE, stdout=write_end, stderr=None)
    try:
        assert stdio.stdin_pipe is not None and stdio.stdout_pipe is None
        assert isinstance(stdio.stdout, FdSink) and stdio.stdout.fd != write_end
    finally:
        stdio.close()
        stdio.stdin_pipe.close() if stdio.stdin_pipe else None
        os.close(read_end)
        os.close(write_end)


def test_oom_watcher_calls_back_until_the_agent_goes() -> None:
    seen: list[str] = []

    class Agent:
        def __init__(self) -> None:
            self.events: deque[str | BaseException] = deque(
                ["c1", DeadlineExceededError("poll again"), "c2", KataError("gone")])

        async def get_oom_event(self) -> str:
            await asyncio.sleep(0)
            event = self.events.popleft()
            if isinstance(event, BaseException):
                raise event
            return event

    async def scenario() -> None:
        watcher = OomWatcher(Agent(), "sb")
        watcher.subscribe(seen.append)
        unsubscribe = watcher.subscribe(lambda cid: (_ for _ in ()).throw(RuntimeError("broken subscriber")))
        await asyncio.sleep(0.05)
        unsubscribe()
        await watcher.stop()
    run(scenario())
    assert seen == ["c1", "c2"]


def test_oom_watcher_without_support_just_warns(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        watcher = OomWatcher(object(), "sb")
        watcher.subscribe(print)
        await watcher.stop()
    run(scenario())
    assert "OOM events unavailable" in caplog.text


def test_open_stdio_fails_on_a_bad_fd_and_closes_what_it_opened() -> None:
    from kata.sandbox import SandboxError

    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(SandboxError, match="stdio: Bad file descriptor"):
        open_stdio(stdin=PIPE, stdout=PIPE, stderr=987654)
    assert sorted(os.listdir("/proc/self/fd")) == before

"""ttRPC interop: our client publishes a TaskExit to a real containerd; `ctr events` shows it."""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import empty_pb2, timestamp_pb2

from kata.protocols.events import envelope
from kata.protocols.pb import events_service_pb2, events_task_pb2
from kata.protocols.services import EVENTS_SERVICE
from kata.ttrpc.aio import connect_unix
from kata.ttrpc.status import InvalidArgumentError, NotFoundError, UnimplementedError
from tests.containerd import Containerd, run_containerd

pytestmark = pytest.mark.e2e


@pytest.fixture
def containerd() -> Iterator[Containerd]:
    with tempfile.TemporaryDirectory(prefix="ctd-", dir="/tmp") as base, run_containerd(Path(base)) as daemon:
        yield daemon


def task_exit_envelope(container_id: str, status: int) -> events_service_pb2.ForwardRequest:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    exit_event = events_task_pb2.TaskExit(container_id=container_id, id=container_id, pid=4242,
                                          exit_status=status, exited_at=stamp)
    return events_service_pb2.ForwardRequest(envelope=envelope("default", "/tasks/exit", exit_event))


async def forward(address: str, request: events_service_pb2.ForwardRequest) -> None:
    async with await connect_unix(address) as client:
        await client.call(EVENTS_SERVICE, "Forward", request, empty_pb2.Empty, timeout=10)


def read_until(proc: subprocess.Popen[bytes], needle: str, timeout: float) -> str:
    """The first output line containing ``needle``; never blocks past ``timeout``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = b""
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([proc.stdout], [], [], left)[0]:
            break
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        seen += chunk
        for line in seen.decode(errors="replace").splitlines():
            if needle in line:
                return line
    raise AssertionError(f"{needle!r} not seen in ctr events output: {seen!r}")


def test_published_task_exit_reaches_ctr_events(containerd: Containerd) -> None:
    watcher = subprocess.Popen(["ctr", "--address", containerd.address, "events"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        time.sleep(0.5)  # let ctr subscribe before we publish
        asyncio.run(forward(containerd.ttrpc_address, task_exit_envelope("pykata-interop", 3)))
        line = read_until(watcher, "pykata-interop", timeout=20)
    finally:
        watcher.kill()
        watcher.wait()
    # "2026-11-23 17:47:59.2 +0000 UTC default /tasks/exit {json}"
    namespace, topic, payload = line.split(maxsplit=6)[4:7]
    assert (namespace, topic) == ("default", "/tasks/exit")
    event = json.loads(payload)
    assert event["container_id"] == "pykata-interop"
    assert event["exit_status"] == 3
    assert event["pid"] == 4242


def test_containerd_answers_errors_with_status_codes(containerd: Containerd) -> None:
    async def calls() -> None:
        async with await connect_unix(containerd.ttrpc_address) as client:
            with pytest.raises((UnimplementedError, NotFoundError)):
                await client.call(EVENTS_SERVICE, "NoSuchMethod", empty_pb2.Empty(), empty_pb2.Empty,
                                  timeout=10)
            # An envelope without a namespace is refused, and the connection keeps working.
            bad = task_exit_envelope("x", 1)
            bad.envelope.namespace = ""
            with pytest.raises(InvalidArgumentError):
                await client.call(EVENTS_SERVICE, "Forward", bad, empty_pb2.Empty, timeout=10)
            await client.call(EVENTS_SERVICE, "Forward", task_exit_envelope("y", 0), empty_pb2.Empty,
                              timeout=10)

    asyncio.run(calls())

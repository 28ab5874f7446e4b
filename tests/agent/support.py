"""Helpers of the host-mode runtime tests: busybox rootfs, specs, and running a container to its end."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from kata.agent import AgentClient
from kata.guest.runtime import ContainerRuntime
from kata.oci import Linux, Process, Root, Spec, default_spec

T = TypeVar("T")
BUSYBOX = Path("/bin/busybox")
APPLETS = (
    "sh", "echo", "id", "hostname", "cat", "sleep", "ls", "mount", "readlink", "test", "tty", "stty", "env",
    "pwd", "grep", "true", "false", "touch", "mkdir", "kill", "stat", "head", "wc", "tr", "printf", "umask",
    "ps", "rm", "chmod",
)
ENV = ("PATH=/bin", "TERM=xterm")


def make_rootfs(parent: Path) -> Path:
    """A minimal rootfs: /bin/busybox with applet symlinks, /etc, /tmp, /proc, /sys."""
    root = parent / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for name in ("etc", "tmp", "proc", "sys", "root"):
        (root / name).mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    os.chmod(root / "tmp", 0o1777)
    return root


def make_spec(rootfs: Path, *args: str, terminal: bool = False, **process: Any) -> Spec:
    """runc's default spec on ``rootfs`` (writable, no terminal) running ``args``."""
    spec = default_spec()
    assert spec.process is not None
    return replace(
        spec,
        root=Root(path=str(rootfs), readonly=False),
        process=replace(spec.process, terminal=terminal, args=args, env=ENV, **process),
    )


def with_linux(spec: Spec, **changes: Any) -> Spec:
    """``spec`` with fields of ``spec.linux`` replaced."""
    linux = spec.linux or Linux()
    return replace(spec, linux=replace(linux, **changes))


def with_process(spec: Spec, **changes: Any) -> Spec:
    """``spec`` with fields of ``spec.process`` replaced."""
    assert spec.process is not None
    return replace(spec, process=replace(spec.process, **changes))


def exec_process(*args: str, terminal: bool = False, **changes: Any) -> Process:
    """An exec'd process running ``args`` as root in /."""
    return Process(args=args, env=ENV, cwd="/", terminal=terminal, **changes)


def drain(read: Any, container_id: str, exec_id: str) -> bytes:
    """Everything a read_stdout/read_stderr gives until EOF."""
    chunks = []
    while chunk := read(container_id, exec_id, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class Result:
    """How a container's process ended."""

    status: int
    stdout: str
    stderr: str


def run(runtime: ContainerRuntime, spec: Spec, container_id: str = "c1", *, remove: bool = True) -> Result:
    """Create, start, read stdout and stderr to EOF, wait and (by default) remove."""
    runtime.create_container(container_id, spec)
    try:
        runtime.start_container(container_id)
        stdout = drain(runtime.read_stdout, container_id, "")
        stderr = drain(runtime.read_stderr, container_id, "")
        status = runtime.wait_process(container_id, "", timeout=10)
    finally:
        if remove:
            runtime.remove_container(container_id, timeout=10)
    return Result(status, stdout.decode(), stderr.decode())


def run_exec(runtime: ContainerRuntime, container_id: str, exec_id: str, process: Process) -> Result:
    """Exec ``process`` in a running container and collect its output and status."""
    runtime.exec_process(container_id, exec_id, process)
    stdout = drain(runtime.read_stdout, container_id, exec_id)
    stderr = drain(runtime.read_stderr, container_id, exec_id)
    return Result(runtime.wait_process(container_id, exec_id, timeout=10), stdout.decode(), stderr.decode())


def start_host_agent(sock: Path, root: Path, *, own_netns: bool = False) -> subprocess.Popen[bytes]:
    """The host-mode agent in its own mount/UTS/IPC (and, with ``own_netns``, network) namespaces,
    listening on ``sock`` once this returns (unshare execs it: its pid is the agent's).

    Raises:
        RuntimeError: with the agent's stderr when it does not come up within 20 s.
    """
    namespaces = ["--net"] if own_netns else []
    process = subprocess.Popen(
        ["unshare", *namespaces, "--mount", "--uts", "--ipc", "--propagation", "private", sys.executable, "-m",
         "kata.guest.hostmode", "--socket", str(sock), "--root", str(root)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not sock.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"host-mode agent did not start: {process.communicate()[1].decode()}")
        time.sleep(0.02)
    return process


def stop_host_agent(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the agent (it tears its containers down), SIGKILL it after 15 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    assert process.stderr is not None
    process.stderr.close()


def run_with_agent(url: str, scenario: Callable[[AgentClient], Awaitable[T]]) -> T:
    """Run ``scenario`` with an AgentClient connected to ``url``, closing it afterwards."""
    async def main() -> T:
        client = await AgentClient.connect(url, timeout=10)
        try:
            return await scenario(client)
        finally:
            await client.close()
    return asyncio.run(main())

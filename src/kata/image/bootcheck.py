"""Boot an image once under QEMU and time it: launch to the agent's first Health.Check answer, or to
a bare guest's power-off.

Used by the VM tests and bench/boot_ratio.py. Talks ttRPC to the agent (Check, CreateSandbox,
DestroySandbox); QEMU's argv is a pure function, the process is handled in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kata.errors import HypervisorError
from kata.hypervisor import accel
from kata.hypervisor.qemu.args import BASE_KERNEL_PARAMS
from kata.image.cpio import CpioWriter
from kata.image.tree import BUSYBOX

__all__ = [
    "BOOT_CMDLINE",
    "TCG_CPU",
    "BootReport",
    "BootedVm",
    "boot_and_check",
    "boot_bare",
    "qemu_argv",
    "write_bare_initrd",
]

QEMU = "qemu-system-x86_64"
# The QEMU driver's kernel command line (ENVIRONMENT.md: each parameter saves boot time under TCG).
BOOT_CMDLINE = BASE_KERNEL_PARAMS
# The QEMU driver's TCG cpu model (kata.hypervisor.accel), so boots here measure what sandboxes get.
TCG_CPU = accel.TCG_CPU
AGENT_PORT_NAME = "agent.channel.0"
BARE_INIT = f"#!{BUSYBOX} sh\nexec {BUSYBOX} poweroff -f\n"


def qemu_argv(kernel: Path, initrd: Path, *, console_log: Path, agent_socket: Path | None = None,
              memory_mb: int = 256, extra_cmdline: str = "", qemu: str = QEMU, cpu: str = TCG_CPU) -> list[str]:
    """QEMU 7.2 arguments: q35 under TCG, PVH ``kernel``, serial console to a file, agent port."""
    argv = [
        qemu, "-machine", "q35", "-accel", "tcg", "-cpu", cpu, "-m", str(memory_mb), "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", f"{BOOT_CMDLINE} {extra_cmdline}".strip(),
        "-chardev", f"file,id=console,path={console_log}", "-serial", "chardev:console",
    ]
    if agent_socket is not None:
        argv += ["-device", "virtio-serial-pci",
                 "-chardev", f"socket,id=agent,path={agent_socket},server=on,wait=off",
                 "-device", f"virtserialport,chardev=agent,name={AGENT_PORT_NAME}"]
    return argv


class BootedVm:
    """A running QEMU; leaving the ``with`` block kills it if it has not exited by itself."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.started = 0.0
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BootedVm:
        self.started = time.monotonic()
        try:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE)
        except OSError as exc:
            raise HypervisorError(f"{self.argv[0]}: {exc.strerror}") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def kill(self) -> None:
        """SIGKILL QEMU (if still running) and reap it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()

    def wait_exit(self, timeout: float) -> int:
        """QEMU's exit code once it exits by itself.

        Raises:
            HypervisorError: when it is still running after ``timeout`` seconds.
        """
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise HypervisorError(f"QEMU still running {timeout:g} s later") from exc

    def connect(self, path: Path, timeout: float) -> socket.socket:
        """Connect to a QEMU ``server=on`` unix socket (retrying until QEMU listens).

        Raises:
            HypervisorError: when QEMU exits or does not listen within ``timeout``.
        """
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
            if self.process.poll() is not None:
                raise HypervisorError(f"QEMU exited ({self.process.returncode}) before {path} was ready")
            if time.monotonic() > deadline:
                raise HypervisorError(f"QEMU socket {path} not ready after {timeout:g} s")
            time.sleep(0.002)


@dataclass(frozen=True)
class BootReport:
    """Timings of one boot (host wall clock from QEMU's launch) and the guest's console output."""

    to_ready: float
    to_exit: float
    exit_code: int
    console: str


async def _talk(vm: BootedVm, sock_path: Path, sandbox_id: str, timeout: float) -> float:
    """Check until SERVING (the ready time), then CreateSandbox and DestroySandbox (power off)."""
    from kata.agent import AgentClient, SandboxRequest

    stream = await asyncio.to_thread(vm.connect, sock_path, timeout)
    stream.setblocking(False)
    from kata.ttrpc.aio import connect_socket

    client = AgentClient(await connect_socket(stream), url=f"unix://{sock_path}")
    try:
        await client.wait_ready(timeout)
        ready = vm.elapsed()
        await client.create_sandbox(SandboxRequest(sandbox_id=sandbox_id or "bootcheck"))
        await client.destroy_sandbox()
    finally:
        await client.close()
    return ready


def boot_and_check(kernel: Path, initrd: Path, workdir: Path, *, timeout: float = 60.0,
                   extra_cmdline: str = "", sandbox_id: str = "", cpu: str = TCG_CPU) -> BootReport:
    """Boot, wait for the agent's Health.Check, create and destroy a sandbox, wait for QEMU to exit.

    Raises:
        HypervisorError: when QEMU fails or the guest does not power off.
        AgentError, RpcError: when the agent does not answer or answers wrongly.
    """
    sock_path, console = workdir / "agent.sock", workdir / "console.log"
    sock_path.unlink(missing_ok=True)
    argv = qemu_argv(kernel, initrd, console_log=console, agent_socket=sock_path, extra_cmdline=extra_cmdline,
                     cpu=cpu)
    with BootedVm(argv) as vm:
        to_ready = asyncio.run(_talk(vm, sock_path, sandbox_id, timeout))
        code = vm.wait_exit(10.0)
        to_exit = vm.elapsed()
    return BootReport(to_ready, to_exit, code, console.read_text(errors="replace"))


def write_bare_initrd(path: Path, busybox: Path = BUSYBOX) -> None:
    """A busybox-only initrd whose /init powers off at once: the floor any image is compared with."""
    with path.open("wb") as fh:
        writer = CpioWriter(fh)
        for name in ("bin", "dev"):
            writer.add_directory(name)
        writer.add_file("bin/busybox", busybox, 0o755)
        writer.add_bytes("init", BARE_INIT.encode(), 0o755)
        writer.add_char_device("dev/console", 5, 1)
        writer.close()


def boot_bare(kernel: Path, initrd: Path, workdir: Path, *, timeout: float = 60.0,
              extra_cmdline: str = "", cpu: str = TCG_CPU) -> float:
    """Seconds from QEMU's launch until a guest that powers off at once has made QEMU exit.

    Raises:
        HypervisorError: when QEMU does not exit in time.
    """
    argv = qemu_argv(kernel, initrd, console_log=workdir / "bare-console.log", extra_cmdline=extra_cmdline,
                     cpu=cpu)
    with BootedVm(argv) as vm:
        vm.wait_exit(timeout)
        return vm.elapsed()

"""A tiny busybox test initrd whose /init answers line commands on the agent.channel.0 port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from kata.image.modules import ModuleRequest, resolve_kernel_modules

__all__ = ["GUEST_INITRD", "GUEST_KERNEL", "GuestShell", "build_tiny_initrd", "have_guest_initrd",
           "kernel_modules_dir"]

GUEST_DIR = Path("/var/cache/pykata/guest")
GUEST_KERNEL = GUEST_DIR / "vmlinux"
GUEST_INITRD = GUEST_DIR / "kata-initrd.img"
BUSYBOX = Path("/bin/busybox")
# What the tests need: both virtio transports, the agent port, disks and virtio-fs.
MODULES = ("virtio_pci", "virtio_mmio", "virtio_console", "virtio_blk", "virtiofs")

# PING -> PONG; RUN <cmd> -> its output then "END <rc>"; POWEROFF -> poweroff -f. The port is
# opened once (one open per port); when the host hangs up, read returns EOF: back off and retry.
INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.load); do insmod /lib/modules/$m; done
port=""
while [ -z "$port" ]; do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat $p/name 2>/dev/null)" = agent.channel.0 ] && port=/dev/${p##*/}
  done
  [ -z "$port" ] && sleep 0.05
done
echo "tiny-init: agent port $port" > /dev/console
exec 3<>"$port"
while true; do
  while read -r cmd arg <&3; do
    case "$cmd" in
      PING) echo "PONG tiny-init" >&3 ;;
      RUN) sh -c "$arg" >&3 2>&1; echo "END $?" >&3 ;;
      POWEROFF) echo "BYE" >&3; poweroff -f ;;
      *) echo "ERR unknown command $cmd" >&3 ;;
    esac
  done
  sleep 0.1
done
"""


def kernel_modules_dir() -> Path:
    """``lib/modules/<release>`` of the cached guest kernel."""
    info = json.loads((GUEST_DIR / "kernel.json").read_text())
    return Path(str(info["directory"])) / "lib" / "modules" / str(info["release"])


def build_tiny_initrd(workdir: Path) -> Path:
    """Build the test initrd in ``workdir`` and return its path (``cpio -o -H newc``, gzip-free)."""
    root = workdir / "root"
    for sub in ("bin", "proc", "sys", "dev", "mnt", "lib/modules"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    modules_dir = kernel_modules_dir()
    # Modules the kernel has built in (the minimal flavour has all of them) need no file.
    order = resolve_kernel_modules(modules_dir, [ModuleRequest(name, True) for name in MODULES]).load_order
    for path in order:
        target = root / "lib" / "modules" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(modules_dir / path, target)
    (root / "modules.load").write_text("\n".join(order) + "\n")
    init = root / "init"
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)
    image = workdir / "tiny-initrd.img"
    names = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True).stdout
    with image.open("wb") as out:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=names, stdout=out,
                       check=True)
    return image


class GuestShell:
    """Host end of the tiny init's line protocol on the agent socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(cls, path: str, timeout: float = 30.0) -> GuestShell:
        """Connect to the agent socket (the QEMU chardev exists once start() returned)."""
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
        return cls(reader, writer)

    async def line(self, command: str, timeout: float = 60.0) -> str:
        """Send one command, return the first line of the answer."""
        self._writer.write(command.encode() + b"\n")
        await self._writer.drain()
        return (await asyncio.wait_for(self._reader.readline(), timeout)).decode().strip()

    async def send(self, command: str) -> None:
        """Send one command line without reading the answer."""
        self._writer.write(command.encode() + b"\n")
        await self._writer.drain()

    async def read_line(self, timeout: float) -> str:
        """The next answer line (TimeoutError after ``timeout`` s; the line stays readable later)."""
        return (await asyncio.wait_for(self._reader.readline(), timeout)).decode().strip()

    async def ping(self, timeout: float = 60.0) -> str:
        """PING until the guest answers (it may still be booting): the PONG line."""
        return await self.line("PING", timeout)

    async def run(self, command: str, timeout: float = 30.0) -> tuple[int, str]:
        """Run a shell command in the guest: (exit status, output)."""
        self._writer.write(f"RUN {command}\n".encode())
        await self._writer.drain()
        lines: list[str] = []
        async with asyncio.timeout(timeout):
            while not (line := (await self._reader.readline()).decode()).startswith("END "):
                if not line:
                    raise EOFError("guest hung up")
                lines.append(line)
        return int(line.split()[1]), "".join(lines)

    async def close(self) -> None:
        """Hang up."""
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


def have_guest_initrd() -> bool:
    """Whether the real guest initrd has been built."""
    return GUEST_INITRD.exists() and os.access(GUEST_INITRD, os.R_OK)

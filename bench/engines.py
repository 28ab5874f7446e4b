"""The ways a bench runs a container: the sandbox library, the OCI CLI, containerd + ctr (our shim or runc), runc."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common import VENV_BIN, progress

KATA_RUNTIME = VENV_BIN / "kata-runtime"
SHIM = VENV_BIN / "containerd-shim-kata-v2"
KATA_RUNTIME_NAME = "io.containerd.kata.v2"


def oci_cli_available() -> str:
    """"" when ``kata-runtime run`` exists (the OCI CLI's verbs are registered), else why not."""
    if not KATA_RUNTIME.exists():
        return f"{KATA_RUNTIME} is not installed"
    done = subprocess.run([str(KATA_RUNTIME), "run", "--help"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"`kata-runtime run --help` exits {done.returncode}: the OCI CLI is not there yet"
    return ""


def runc_available() -> str:
    return "" if shutil.which("runc") else "runc is not installed"


def run_quiet(argv: Sequence[str], timeout: float = 300) -> None:
    """Run ``argv`` to completion; raise with its stderr when it fails."""
    done = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}... exited {done.returncode}: {done.stderr.strip()[-500:]}")


@dataclass(frozen=True)
class Ctr:
    """A running containerd (own dirs) that finds our shim on its PATH, with the busybox image imported."""

    address: str
    image: str
    base: Path

    def argv(self, *args: str) -> list[str]:
        return ["ctr", "--address", self.address, *args]

    def run_argv(self, container_id: str, *command: str, runtime: str = KATA_RUNTIME_NAME,
                 config_path: str = "", detach: bool = False) -> list[str]:
        """``ctr run`` of the busybox image (``--rm`` unless ``detach``)."""
        extra = ["--runtime", runtime] + (["--runtime-config-path", config_path] if config_path else [])
        mode = ["-d"] if detach else ["--rm"]
        return self.argv("run", *mode, *extra, self.image, container_id, *command)

    def remove(self, container_id: str) -> None:
        """Kill and delete the task, remove the container (errors ignored: it may be gone already)."""
        for args in (("task", "kill", "-s", "SIGKILL", container_id), ("task", "delete", "-f", container_id),
                     ("container", "rm", container_id)):
            subprocess.run(self.argv(*args), capture_output=True, check=False, timeout=60)


@contextlib.contextmanager
def containerd() -> Iterator[Ctr]:
    """containerd 1.6 with its own root, our shim first on its PATH, the tests' busybox image imported."""
    from tests.containerd import run_containerd
    from tests.images import busybox_image

    if not SHIM.exists():
        raise SystemExit(f"{SHIM} is not installed (make setup)")
    with tempfile.TemporaryDirectory(prefix="bench-ctd-", dir="/tmp") as base_dir:
        base = Path(base_dir)
        image = busybox_image(base)
        with run_containerd(base, path=f"{VENV_BIN}:{os.environ['PATH']}") as ctd:
            ctr = Ctr(ctd.address, image.name, base)
            run_quiet(ctr.argv("image", "import", str(image.archive)))
            progress("containerd up, busybox image imported")
            try:
                yield ctr
            finally:
                for line in subprocess.run(ctr.argv("container", "ls", "-q"), capture_output=True, text=True,
                                           check=False).stdout.split():
                    ctr.remove(line)


@contextlib.contextmanager
def vm_cache(config_path: Path, endpoint: Path, timeout: float = 180.0) -> Iterator[Callable[[], None]]:
    """``kata-runtime factory init`` serving the VM cache of ``config_path`` (its endpoint ``endpoint``); yields
    a function that waits until the cache is full again and nothing boots (so a refill never runs beside
    a measured start). The server is stopped (SIGTERM: it stops its VMs) on exit."""
    import asyncio

    from kata.factory.cache import VmCacheClient

    server = subprocess.Popen([str(KATA_RUNTIME), "--kata-config", str(config_path), "factory", "init"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def full() -> bool:
        try:
            status = asyncio.run(VmCacheClient(str(endpoint)).status())
        except Exception:  # not serving yet
            return False
        return status.ready == status.number and status.booting == 0

    def wait_full() -> None:
        deadline = time.monotonic() + timeout
        while not full():
            if server.poll() is not None:
                raise RuntimeError(f"vm cache server exited {server.returncode}: {server.communicate()[1][-500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"vm cache not full within {timeout:g} s")
            time.sleep(0.1)

    try:
        yield wait_full  # called outside an event loop (it runs its own)
    finally:
        server.terminate()
        server.communicate(timeout=60)


@contextlib.contextmanager
def fork_server(enabled: bool = True) -> Iterator[int]:
    """``kata-runtime fork-server`` on the default socket when ``enabled`` (its pid), else nothing (0)."""
    from kata.shim.forkserver import server_socket

    if not enabled:
        yield 0
        return
    process = subprocess.Popen([str(KATA_RUNTIME), "fork-server"])
    try:
        while not os.path.exists(server_socket()):
            if process.poll() is not None:
                raise RuntimeError(f"fork server exited {process.returncode}")
            time.sleep(0.02)
        yield process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait()


def bench_config(directory: Path, hypervisor: Mapping[str, object] | None = None,
                 agent: Mapping[str, object] | None = None, factory: Mapping[str, object] | None = None,
                 runtime: Mapping[str, object] | None = None) -> Path:
    """A configuration.toml: the built-in defaults plus a config.d fragment with ``hypervisor`` keys in
    ``[hypervisor.qemu]``, ``agent`` keys in ``[agent.kata]``, ``factory`` keys in ``[factory]`` and
    ``runtime`` keys in ``[runtime]``."""
    from kata.config import loader

    directory.mkdir(parents=True, exist_ok=True)
    builtin = Path(loader.__file__).parent / "configuration.toml"
    fragment = ""
    for section, keys in (("hypervisor.qemu", hypervisor or {}), ("agent.kata", agent or {}),
                          ("factory", factory or {}), ("runtime", runtime or {})):
        if keys:
            fragment += f"[{section}]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in keys.items())
    if fragment:
        (directory / "config.d").mkdir(exist_ok=True)
        (directory / "config.d" / "50-bench.toml").write_text(fragment)
    path = directory / "configuration.toml"
    path.write_text(builtin.read_text())
    return path


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

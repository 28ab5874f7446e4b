"""podman 4.3 (Debian's, with conmon) running containers in QEMU guests through kata-runtime as its OCI
runtime: its own --root/--runroot, the busybox image loaded from an OCI archive."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.images import BUSYBOX_IMAGE, OciImage
from tests.terminal import read_until

pytestmark = [pytest.mark.vm, pytest.mark.e2e]
KATA = Path(sys.executable).parent / "kata-runtime"
GUEST_KERNEL = Path("/var/cache/pykata/guest/kernel.json")
TIMEOUT = 180
# root here lacks CAP_SYS_RESOURCE: podman's default ulimits (raising nofile) would fail
CONTAINERS_CONF = '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'


@dataclass(frozen=True)
class Podman:
    """podman with its own storage and state, kata-runtime as the runtime. podman 4.3 does not pass
    --runtime-flag to `delete`, so kata-runtime keeps its default --root (/run/kata) here."""

    base: Path

    def argv(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.base / "root"), "--runroot", str(self.base / "runroot"),
                "--tmpdir", str(self.base / "tmp"), "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                "--runtime", str(KATA), *args]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.base / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(self.base / "storage.conf")}

    def __call__(self, *args: str, timeout: float = TIMEOUT,
                 stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, env=self.env, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: rc {result.returncode}: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    """podman with the busybox image loaded (once per module)."""
    if shutil.which("podman") is None or shutil.which("conmon") is None:
        pytest.skip("podman and conmon are needed (apt-get install podman)")
    if not KATA.exists():
        pytest.skip(f"{KATA} is not installed (pip install -e .)")
    from tests.images import busybox_image

    image: OciImage = busybox_image(tmp_path_factory.mktemp("image"))
    with tempfile.TemporaryDirectory(prefix="podman-", dir="/tmp") as base:
        pm = Podman(Path(base))
        (pm.base / "containers.conf").write_text(CONTAINERS_CONF)
        (pm.base / "storage.conf").write_text(f'[storage]\ndriver = "overlay"\nrunroot = "{base}/runroot"\n'
                                              f'graphroot = "{base}/root"\n')
        ok(pm("load", "-i", str(image.archive)))
        try:
            yield pm
        finally:
            pm("rm", "--all", "--force", "--time", "0")
            pm("system", "reset", "--force")


def guest_kernel() -> str:
    release: str = json.loads(GUEST_KERNEL.read_text())["release"]
    return release


def test_run_rm_prints_the_guest_kernel_and_passes_exit_codes(podman: Podman) -> None:
    started = time.monotonic()
    assert ok(podman("run", "--rm", BUSYBOX_IMAGE, "uname", "-r")).strip() == guest_kernel()
    print(f"podman run --rm uname -r: {time.monotonic() - started:.2f} s")
    failed = podman("run", "--rm", BUSYBOX_IMAGE, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (failed.returncode, failed.stdout, failed.stderr) == (7, "out\n", "err\n")
    assert ok(podman("ps", "-aq")) == ""


def test_run_detached_exec_stop_rm(podman: Podman) -> None:
    script = "trap 'echo bye; exit 0' TERM; while :; do sleep 0.2; done"
    ok(podman("run", "-d", "--name", "d1", BUSYBOX_IMAGE, "sh", "-c", script))
    try:
        execd = podman("exec", "d1", "sh", "-c", "echo from-exec; uname -r; exit 4")
        assert (execd.returncode, execd.stdout) == (4, f"from-exec\n{guest_kernel()}\n"), execd.stderr
        assert ok(podman("exec", "-i", "d1", "cat", stdin="piped in\n")) == "piped in\n"
        assert ok(podman("inspect", "--format", "{{.State.Status}}", "d1")).strip() == "running"
        ok(podman("stop", "d1"))
        assert ok(podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", "d1")).split() == [
            "exited", "0"]
        assert ok(podman("logs", "d1")) == "bye\n"
    finally:
        ok(podman("rm", "--force", "d1"))
    assert ok(podman("ps", "-aq")) == ""


def test_run_interactive_terminal(podman: Podman) -> None:
    """`podman run -it` on a terminal of ours (33x101): the guest shell sees that size and its exit code."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    process = subprocess.Popen(podman.argv("run", "-it", "--rm", BUSYBOX_IMAGE, "sh"), stdin=slave, stdout=slave,
                               stderr=slave, env=podman.env, start_new_session=True)
    os.close(slave)
    try:
        read_until(master, b"# ", TIMEOUT)
        os.write(master, b"stty size; test -t 0 && echo on-a-tty-$((6*7)); exit 3\r")
        output = read_until(master, b"on-a-tty-42\r\n", timeout=60)
        assert b"33 101\r\n" in output, output
        assert process.wait(60) == 3
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)

"""Docker 20.10 (Debian's docker.io) with kata-runtime added as a runtime: dockerd with its own dirs, its
containerd-shim-runc-v2 driving kata-runtime as it drives runc."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.images import busybox_image

pytestmark = [pytest.mark.vm, pytest.mark.e2e]
KATA = Path(sys.executable).parent / "kata-runtime"
DOCKER = "/usr/bin/docker"  # Debian's 20.10 client (another may come first on PATH)
DOCKERD = "/usr/sbin/dockerd"
GUEST_KERNEL = Path("/var/cache/pykata/guest/kernel.json")
IMAGE = "pykata-busybox:latest"
TIMEOUT = 180


@dataclass(frozen=True)
class Docker:
    """The docker client of one test dockerd."""

    socket: Path

    def __call__(self, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DOCKER, "-H", f"unix://{self.socket}", *args], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: rc {result.returncode}: {result.stderr}"
    return result.stdout


def docker_archive(oci_archive: Path, target: Path) -> Path:
    """The OCI image archive plus the manifest.json `docker load` (20.10) reads."""
    with tarfile.open(oci_archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    descriptor = json.loads(files["index.json"])["manifests"][0]
    manifest = json.loads(files["blobs/sha256/" + descriptor["digest"].removeprefix("sha256:")])

    def blob(digest: str) -> str:
        return "blobs/sha256/" + digest.removeprefix("sha256:")
    entry = {"Config": blob(manifest["config"]["digest"]), "RepoTags": [IMAGE],
             "Layers": [blob(layer["digest"]) for layer in manifest["layers"]]}
    files["manifest.json"] = json.dumps([entry]).encode()
    with tarfile.open(target, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return target


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Docker]:
    """dockerd (own data, exec root and socket; no bridge, no iptables) with runtime kata = kata-runtime and
    the busybox image loaded."""
    if not (os.path.exists(DOCKERD) and os.path.exists(DOCKER)):
        pytest.skip("dockerd is needed (apt-get install docker.io)")
    image = busybox_image(tmp_path_factory.mktemp("image"))
    archive = docker_archive(image.archive, image.archive.with_name("busybox-docker.tar"))
    # short paths: containerd's sockets live below the exec root
    with tempfile.TemporaryDirectory(prefix="dk-", dir="/tmp") as base:
        (Path(base) / "daemon.json").write_text("{}")
        sock = Path(base) / "docker.sock"
        log = (Path(base) / "dockerd.log").open("w")
        daemon = subprocess.Popen([DOCKERD, "--config-file", f"{base}/daemon.json", "--data-root", f"{base}/data",
                                   "--exec-root", f"{base}/exec", "--pidfile", f"{base}/docker.pid", "-H",
                                   f"unix://{sock}", "--bridge", "none", "--iptables=false", "--ip-masq=false",
                                   "--storage-driver", "overlay2", "--add-runtime", f"kata={KATA}"],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        client = Docker(sock)
        try:
            deadline = time.monotonic() + 60
            while client("version").returncode != 0:
                assert daemon.poll() is None and time.monotonic() < deadline, (Path(base) / "dockerd.log").read_text()
                time.sleep(0.3)
            ok(client("load", "-i", str(archive)))
            yield client
        finally:
            for container in client("ps", "-aq").stdout.split():
                client("rm", "-f", container)
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
            log.close()
            shutil.rmtree(f"{base}/data", ignore_errors=True)


def guest_kernel() -> str:
    release: str = json.loads(GUEST_KERNEL.read_text())["release"]
    return release


def test_run_rm_prints_the_guest_kernel(docker: Docker) -> None:
    started = time.monotonic()
    assert ok(docker("run", "--rm", "--runtime", "kata", IMAGE, "uname", "-r")).strip() == guest_kernel()
    print(f"docker run --rm uname -r: {time.monotonic() - started:.2f} s")
    failed = docker("run", "--rm", "--runtime", "kata", IMAGE, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (failed.returncode, failed.stdout, failed.stderr) == (7, "out\n", "err\n")
    assert ok(docker("ps", "-aq")) == ""


def test_run_detached_exec_stop(docker: Docker) -> None:
    script = "trap 'echo bye; exit 0' TERM; while :; do sleep 0.2; done"
    ok(docker("run", "-d", "--name", "d1", "--runtime", "kata", IMAGE, "sh", "-c", script))
    try:
        execd = docker("exec", "d1", "sh", "-c", "echo in-exec; exit 3")
        assert (execd.returncode, execd.stdout) == (3, "in-exec\n"), execd.stderr
        ok(docker("stop", "d1"))
        assert ok(docker("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", "d1")).split() == [
            "exited", "0"]
        assert ok(docker("logs", "d1")) == "bye\n"
    finally:
        ok(docker("rm", "-f", "d1"))

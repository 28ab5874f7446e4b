"""The VM cache behind the front doors: `ctr run` (our shim) and `kata-runtime run` take cached VMs over."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.sandbox_support import make_bundle
from tests.containerd import Containerd
from tests.e2e.test_shim_ctr import ctr_run, ok
from tests.images import BUSYBOX_IMAGE
from tests.vm.test_vm_cache import KATA_RUNTIME, cache_config, start_server, status, wait_ready

pytestmark = pytest.mark.e2e


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A dir below /run for the cache: its VMs are handed over by a rename into /run/kata (same filesystem)."""
    path = Path(tempfile.mkdtemp(prefix="pykata-cache-", dir="/run"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_ctr_and_the_oci_cli_run_containers_in_cached_vms(kata_containerd: Containerd, tmp_path: Path,
                                                         run_dir: Path) -> None:
    servers: list[subprocess.Popen[str]] = []
    config = cache_config("virtio-fs", run_dir)
    server = start_server(servers, config, run_dir)
    path = run_dir / "configuration.toml"
    try:
        wait_ready(config, server)
        kernel = ok(ctr_run(kata_containerd, "--runtime-config-path", str(path), BUSYBOX_IMAGE, "c1", "uname", "-r"))
        assert kernel.strip() and kernel.strip() != subprocess.run(["uname", "-r"], capture_output=True,
                                                                   text=True, check=True).stdout.strip()
        assert status(config)["served"] == 1
        wait_ready(config, server)  # refilled
        bundle = make_bundle(tmp_path / "bundle", "sh", "-c", "echo $$; exit 3")
        done = subprocess.run([KATA_RUNTIME, "--kata-config", str(path), "--root", str(tmp_path / "oci"), "run",
                               "--bundle", str(bundle), "c2"], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=120, check=False)
        assert (done.returncode, done.stdout) == (3, "1\n"), done.stderr
        assert status(config)["served"] == 2
    finally:
        server.terminate()
        server.communicate(timeout=60)

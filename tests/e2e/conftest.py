"""e2e fixtures: a real containerd (own dirs) with our shim on its PATH and the busybox image imported."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containerd import Containerd, run_containerd
from tests.images import OciImage, busybox_image

VENV_BIN = Path(sys.executable).parent
SHIM = VENV_BIN / "containerd-shim-kata-v2"


@pytest.fixture(scope="session")
def busybox_archive(tmp_path_factory: pytest.TempPathFactory) -> OciImage:
    """The busybox OCI archive (built once per session)."""
    return busybox_image(tmp_path_factory.mktemp("image"))


@pytest.fixture
def kata_containerd(busybox_archive: OciImage) -> Iterator[Containerd]:
    """containerd whose PATH finds our containerd-shim-kata-v2, with the busybox image imported."""
    if not SHIM.exists():
        pytest.skip(f"{SHIM} is not installed (pip install -e .)")
    path = f"{VENV_BIN}:{os.environ['PATH']}"
    with tempfile.TemporaryDirectory(prefix="ctd-", dir="/tmp") as base, run_containerd(Path(base), path=path) as ctd:
        imported = ctd.ctr("image", "import", str(busybox_archive.archive))
        assert imported.returncode == 0, imported.stderr
        try:
            yield ctd
        finally:
            _remove_everything(ctd)


def _remove_everything(ctd: Containerd) -> None:
    """What a failed test left: kill and delete its tasks (so shims and VMs go), remove containers."""
    listing = ctd.ctr("task", "ls").stdout.splitlines()[1:]
    for line in listing:
        task = line.split()[0]
        ctd.ctr("task", "kill", "-s", "SIGKILL", task)
        for _ in range(50):
            if ctd.ctr("task", "delete", task).returncode == 0:
                break
            time.sleep(0.2)
    for container in ctd.ctr("container", "ls", "-q").stdout.split():
        ctd.ctr("container", "rm", container)

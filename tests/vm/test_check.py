"""`kata-runtime check` on the real host: it boots probe guests and never hangs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kata.host.facts import kvm_status

pytestmark = pytest.mark.vm


def test_check_proves_an_accelerator_within_30_seconds(tmp_path: Path) -> None:
    env = {**os.environ, "KATA_PROBE_CACHE": str(tmp_path / "accel.json")}
    start = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).parent / "kata-runtime"), "check"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < 30
    assert "System is capable of running pykata" in proc.stdout
    accelerator = next(line for line in proc.stdout.splitlines() if "accelerator:" in line)
    assert "will be used (probe guest booted in" in accelerator
    if "TCG will be used" in accelerator and kvm_status().present:
        assert "KVM is unusable here" in proc.stdout
    assert (tmp_path / "accel.json").exists()  # sandboxes reuse the probe result

"""Host facts that do not need special devices."""

from __future__ import annotations

from pathlib import Path

from kata.config import Config
from kata.host import facts
from kata.host.checks import CheckResult, Status, check_image, is_capable


def test_cgroup_version_detection(tmp_path: Path) -> None:
    assert facts.cgroup_version(str(tmp_path)) == "v1"
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified/cgroup.controllers").write_text("")
    assert facts.cgroup_version(str(tmp_path)) == "hybrid"
    (tmp_path / "cgroup.controllers").write_text("cpu memory")
    assert facts.cgroup_version(str(tmp_path)) == "v2"


def test_missing_device_is_reported(tmp_path: Path) -> None:
    ok, detail = facts.device_usable(str(tmp_path / "vhost-vsock"))
    assert not ok
    assert detail.endswith("does not exist")


def test_missing_kvm_device() -> None:
    status = facts.kvm_status("/dev/no-such-kvm")
    assert (status.present, status.usable) == (False, False)


def test_program_version_of_missing_program() -> None:
    assert facts.program_version("/nonexistent/qemu") is None


def test_capability_rules() -> None:
    warn = CheckResult("vsock", Status.WARN, "absent")
    fail = CheckResult("qemu", Status.FAIL, "missing")
    assert is_capable([warn])
    assert not is_capable([warn], strict=True)
    assert not is_capable([fail])


def test_missing_image_points_at_the_builder() -> None:
    result = check_image(Config())
    if result.status is not Status.OK:
        assert "kata-runtime image build" in result.detail

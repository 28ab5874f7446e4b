"""The host checks behind `kata-runtime check`: can sandboxes run here, and how."""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kata.config.schema import Config
from kata.errors import AcceleratorError
from kata.host import facts
from kata.hypervisor.accel import DEFAULT_CACHE_FILE, choose_accelerator, probe_accelerator

__all__ = ["CheckResult", "Status", "is_capable", "run_checks"]

SETUP_HINT = "run `make setup` (or `kata-runtime image build`)"


class Status(enum.Enum):
    """Outcome of one check."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class CheckResult:
    """One line of `kata-runtime check`."""

    name: str
    status: Status
    detail: str


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def check_qemu(config: Config) -> CheckResult:
    path = config.hypervisor.path
    version = facts.program_version(path) if _executable(path) else None
    if version is None:
        return CheckResult("qemu", Status.FAIL, f"{path} is missing or does not run: {SETUP_HINT}")
    return CheckResult("qemu", Status.OK, f"{path} ({version})")


def check_kernel(config: Config) -> CheckResult:
    kernel = Path(config.hypervisor.kernel)
    if not kernel.is_file():
        return CheckResult("guest kernel", Status.FAIL, f"{kernel} is missing: {SETUP_HINT}")
    return CheckResult("guest kernel", Status.OK, f"{kernel} -> {kernel.resolve()}")


def check_image(config: Config) -> CheckResult:
    hv = config.hypervisor
    chosen = hv.image or hv.initrd
    if chosen and Path(chosen).is_file():
        return CheckResult("guest image", Status.OK, chosen)
    return CheckResult("guest image", Status.FAIL,
                       f"{chosen or 'no initrd or image configured'} is missing: build it with "
                       "`kata-runtime image build` (or `make setup`)")


def check_kvm(_: Config) -> CheckResult:
    kvm = facts.kvm_status()
    return CheckResult("kvm device", Status.OK if kvm.usable else Status.WARN, f"/dev/kvm: {kvm.detail}")


def check_accelerator(config: Config, cache_file: Path) -> list[CheckResult]:
    """Prove the accelerator by booting the probe guest (refreshing the cache sandboxes use)."""
    hv = config.hypervisor
    if not Path(hv.kernel).is_file():
        return [CheckResult("accelerator", Status.FAIL, "cannot probe without a guest kernel")]
    try:
        if hv.accelerator == "auto":
            choice = choose_accelerator(hv, cache_file=cache_file, refresh=True)
        else:
            choice = probe_accelerator(hv)
    except AcceleratorError as exc:
        return [CheckResult("accelerator", Status.FAIL, str(exc))]
    results = []
    if choice.kvm is not None:
        kvm_ok = choice.kvm.booted and choice.accelerator == "kvm"
        detail = (f"guests boot under KVM ({choice.kvm.seconds:.2f} s)" if kvm_ok
                  else f"KVM is unusable here: {choice.kvm.detail}")
        results.append(CheckResult("kvm", Status.OK if kvm_ok else Status.WARN, detail))
    if hv.accelerator not in ("auto", choice.accelerator):
        return [*results, CheckResult("accelerator", Status.FAIL,
                                      f"configured accelerator {hv.accelerator} does not work here")]
    used = choice.kvm if choice.accelerator == "kvm" else choice.tcg
    timing = f" (probe guest booted in {used.seconds:.2f} s)" if used is not None else ""
    return [*results, CheckResult("accelerator", Status.OK,
                                  f"{choice.accelerator.upper()} will be used{timing}")]


def check_virtiofsd(config: Config) -> CheckResult:
    hv = config.hypervisor
    if hv.shared_fs != "virtio-fs":
        return CheckResult("virtiofsd", Status.OK, f"not needed (shared_fs = {hv.shared_fs})")
    if not _executable(hv.virtio_fs_daemon):
        return CheckResult("virtiofsd", Status.FAIL, f"{hv.virtio_fs_daemon} is missing: {SETUP_HINT}")
    return CheckResult("virtiofsd", Status.OK, hv.virtio_fs_daemon)


def check_vsock(_: Config) -> CheckResult:
    ok, detail = facts.device_usable("/dev/vhost-vsock")
    if ok:
        return CheckResult("vhost-vsock", Status.OK, f"{detail}: agent channel can use vsock")
    return CheckResult("vhost-vsock", Status.WARN, f"{detail}: the agent channel uses virtio-serial")


def check_tun(config: Config) -> CheckResult:
    ok, detail = facts.device_usable("/dev/net/tun")
    if ok or config.runtime.internetworking_model == "none":
        return CheckResult("tun", Status.OK if ok else Status.WARN, detail)
    return CheckResult("tun", Status.FAIL, f"{detail}: VM networking needs tap devices")


def check_netns(_: Config) -> CheckResult:
    ok, detail = facts.can_create_netns()
    return CheckResult("netns", Status.OK if ok else Status.FAIL, detail)


def check_cgroups(_: Config) -> CheckResult:
    return CheckResult("cgroups", Status.OK, f"cgroup {facts.cgroup_version()}")


def check_root(_: Config) -> CheckResult:
    if os.geteuid() == 0:
        return CheckResult("privileges", Status.OK, "running as root")
    return CheckResult("privileges", Status.FAIL, "pykata needs root (namespaces, taps, mounts)")


STATIC_CHECKS: tuple[Callable[[Config], CheckResult], ...] = (
    check_root, check_qemu, check_kernel, check_image, check_kvm, check_virtiofsd, check_vsock,
    check_tun, check_netns, check_cgroups,
)


def run_checks(config: Config, *, cache_file: Path = DEFAULT_CACHE_FILE) -> list[CheckResult]:
    """Every check, in a stable order; the accelerator probe has a bounded run time."""
    results = [check(config) for check in STATIC_CHECKS]
    return results + check_accelerator(config, cache_file)


def is_capable(results: list[CheckResult], *, strict: bool = False) -> bool:
    """Sandboxes can run: no failure (and, when ``strict``, no warning either)."""
    bad = {Status.FAIL, Status.WARN} if strict else {Status.FAIL}
    return not any(result.status in bad for result in results)

"""Accelerator probe: argv, bounded probe runs with fake QEMUs, decision and cache."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kata.config.schema import HypervisorConfig
from kata.errors import AcceleratorError
from kata.host.facts import KvmStatus
from kata.hypervisor import accel
from kata.hypervisor.accel import ProbeResult, cached_choice, choose_accelerator, probe_argv, run_probe


def fake_qemu(tmp_path: Path, body: str) -> str:
    script = tmp_path / "qemu"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_probe_argv_is_a_bare_q35_boot_of_the_kernel() -> None:
    argv = probe_argv("/usr/bin/qemu", "/k/vmlinux", "kvm")
    assert argv[:9] == ["/usr/bin/qemu", "-machine", "q35", "-accel", "kvm", "-cpu", "host,pmu=off",
                        "-m", "256"]
    assert argv[argv.index("-kernel") + 1] == "/k/vmlinux"
    assert "-no-reboot" in argv
    assert "panic=-1" in argv[argv.index("-append") + 1].split()
    assert probe_argv("q", "k", "tcg")[6] == accel.TCG_CPU


def test_probe_counts_a_guest_that_reaches_the_panic(tmp_path: Path) -> None:
    qemu = fake_qemu(tmp_path, 'echo "[ 1.8] Kernel panic - not syncing: VFS"; sleep 30')
    result = run_probe([qemu], "tcg", deadline=10)
    assert result.booted
    assert result.seconds < 5


def test_probe_never_outlives_its_deadline(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    qemu = fake_qemu(tmp_path, f'echo $$ > {pidfile}; echo "Booting paravirtualized kernel"; exec sleep 60')
    start = time.monotonic()
    result = run_probe([qemu], "kvm", deadline=1.0)
    assert time.monotonic() - start < 3
    assert not result.booted
    assert "did not finish booting within 1 s" in result.detail
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)


def test_probe_reports_why_qemu_failed(tmp_path: Path) -> None:
    qemu = fake_qemu(tmp_path, 'echo "qemu: error: failed to set MSR 0x10a" >&2; echo "assert"; exit 1')
    result = run_probe([qemu], "kvm", deadline=5)
    assert not result.booted
    assert result.detail == "qemu failed (exit code 1): qemu: error: failed to set MSR 0x10a"


def test_probe_of_a_missing_binary(tmp_path: Path) -> None:
    result = run_probe([str(tmp_path / "none")], "tcg", deadline=5)
    assert not result.booted
    assert result.detail.startswith("cannot run")


def scripted(monkeypatch: pytest.MonkeyPatch, kvm: ProbeResult, tcg: ProbeResult,
             kvm_usable: bool = True) -> list[float]:
    deadlines: list[float] = []

    def fake_run(argv: list[str], accelerator: str, deadline: float) -> ProbeResult:
        deadlines.append(deadline)
        return kvm if accelerator == "kvm" else tcg

    monkeypatch.setattr(accel, "run_probe", fake_run)
    monkeypatch.setattr(accel, "kvm_status", lambda: KvmStatus(True, kvm_usable, "fake"))
    return deadlines


BOOTED_TCG = ProbeResult("tcg", True, 2.0, "guest kernel booted")


def test_kvm_that_hangs_falls_back_to_tcg(monkeypatch: pytest.MonkeyPatch) -> None:
    deadlines = scripted(monkeypatch, ProbeResult("kvm", False, 4.0, "did not finish"), BOOTED_TCG)
    choice = accel.probe_accelerator(HypervisorConfig(kvm_probe_timeout=10))
    assert choice.accelerator == "tcg"
    assert "KVM is unusable" in choice.reason
    assert deadlines == [accel.TCG_DEADLINE, 4.0]  # KVM gets at most twice TCG's time


def test_kvm_slower_than_tcg_is_not_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    scripted(monkeypatch, ProbeResult("kvm", True, 3.0, "guest kernel booted"), BOOTED_TCG)
    assert accel.probe_accelerator(HypervisorConfig()).accelerator == "tcg"


def test_working_kvm_is_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    scripted(monkeypatch, ProbeResult("kvm", True, 0.4, "guest kernel booted"), BOOTED_TCG)
    assert accel.probe_accelerator(HypervisorConfig()).accelerator == "kvm"


def test_unusable_kvm_device_is_not_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    deadlines = scripted(monkeypatch, BOOTED_TCG, BOOTED_TCG, kvm_usable=False)
    assert accel.probe_accelerator(HypervisorConfig()).accelerator == "tcg"
    assert len(deadlines) == 1


def test_nothing_works_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    failed = ProbeResult("tcg", False, 30.0, "no")
    scripted(monkeypatch, ProbeResult("kvm", False, 1.0, "no"), failed)
    with pytest.raises(AcceleratorError, match="no accelerator works"):
        accel.probe_accelerator(HypervisorConfig())


def test_auto_result_is_cached_per_qemu_and_kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[HypervisorConfig] = []
    real = accel.AcceleratorChoice("tcg", "because", None, BOOTED_TCG)

    def probe(cfg: HypervisorConfig) -> accel.AcceleratorChoice:
        calls.append(cfg)
        return real

    monkeypatch.setattr(accel, "probe_accelerator", probe)
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"k")
    config = HypervisorConfig(kernel=str(kernel))
    cache = tmp_path / "accel.json"
    assert cached_choice(config, cache) is None
    first = choose_accelerator(config, cache_file=cache)
    second = choose_accelerator(config, cache_file=cache)
    assert (first.accelerator, first.cached, second.cached) == ("tcg", False, True)
    assert second.tcg == BOOTED_TCG
    kernel.write_bytes(b"new kernel")  # a different kernel invalidates the cache
    assert not choose_accelerator(config, cache_file=cache).cached
    assert len(calls) == 2


def test_configured_accelerator_is_not_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "probe_accelerator", lambda cfg: pytest.fail("probed"))
    assert choose_accelerator(HypervisorConfig(accelerator="tcg")).accelerator == "tcg"

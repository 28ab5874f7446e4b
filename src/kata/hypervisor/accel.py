"""Choose the accelerator by booting a probe guest: KVM only when it really beats TCG here."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kata.config.schema import HypervisorConfig
from kata.errors import AcceleratorError
from kata.host.facts import boot_id, kvm_status

__all__ = [
    "DEFAULT_CACHE_FILE",
    "KVM_CPU",
    "TCG_CPU",
    "AcceleratorChoice",
    "ProbeResult",
    "cached_choice",
    "choose_accelerator",
    "probe_accelerator",
    "probe_argv",
    "run_probe",
]

DEFAULT_CACHE_FILE = Path(os.environ.get("KATA_PROBE_CACHE", "/run/pykata/accel-probe.json"))
KVM_CPU = "host,pmu=off"
TCG_CPU = "qemu64,+rdrand"
TCG_DEADLINE = 30.0
# The probe kernel has no root device: it boots to the end of kernel init, panics and, with
# panic=-1 and -no-reboot, makes QEMU exit. Seeing this line proves the guest really ran.
PANIC_MARKERS = (b"Kernel panic", b"Unable to mount root fs")
PROBE_CMDLINE = "console=ttyS0 panic=-1 quiet cryptomgr.notests i8042.noaux i8042.nopnp " \
    "mitigations=off no_timer_check audit=0 8250.nr_uarts=1"


@dataclass(frozen=True)
class ProbeResult:
    """How one probe boot went."""

    accelerator: str
    booted: bool
    seconds: float
    detail: str


@dataclass(frozen=True)
class AcceleratorChoice:
    """The accelerator to use, why, and the probes behind the decision."""

    accelerator: str
    reason: str
    kvm: ProbeResult | None = None
    tcg: ProbeResult | None = None
    cached: bool = False


def probe_argv(qemu: str, kernel: str, accelerator: str) -> list[str]:
    """QEMU command line of a probe boot: q35, no devices but a serial console on stdout."""
    cpu = KVM_CPU if accelerator == "kvm" else TCG_CPU
    return [qemu, "-machine", "q35", "-accel", accelerator, "-cpu", cpu, "-m", "256",
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
            "-kernel", kernel, "-append", PROBE_CMDLINE]


def _summary(code: int, data: bytes) -> str:
    """Why QEMU exited: its first error line (else its last line) and how it ended."""
    lines = data.decode("utf-8", "replace").strip().splitlines()
    line = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else "no output")
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    return f"qemu failed ({how}): {line}"


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_probe(argv: list[str], accelerator: str, deadline: float) -> ProbeResult:
    """Run a probe boot; the guest counts as booted once a panic marker reaches the console.

    Never waits longer than ``deadline`` seconds: the QEMU process group is killed then.
    """
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return ProbeResult(accelerator, False, 0.0, f"cannot run {argv[0]}: {exc.strerror}")
    assert proc.stdout is not None
    output = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        try:
            while (left := deadline - (time.monotonic() - start)) > 0:
                if not sel.select(left):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                output += chunk
                if any(marker in output for marker in PANIC_MARKERS):
                    return ProbeResult(accelerator, True, time.monotonic() - start, "guest kernel booted")
                if not chunk:
                    code = proc.wait()
                    return ProbeResult(accelerator, False, time.monotonic() - start,
                                       _summary(code, output))
        finally:
            _kill(proc)
            proc.stdout.close()
    return ProbeResult(accelerator, False, deadline,
                       f"guest kernel did not finish booting within {deadline:.0f} s")


def probe_accelerator(config: HypervisorConfig) -> AcceleratorChoice:
    """Boot the configured kernel under TCG, then under KVM, and pick the better one.

    Raises:
        AcceleratorError: when the guest boots under neither.
    """
    tcg = run_probe(probe_argv(config.path, config.kernel, "tcg"), "tcg", TCG_DEADLINE)
    kvm_dev = kvm_status()
    if not kvm_dev.usable:
        kvm = ProbeResult("kvm", False, 0.0, kvm_dev.detail)
    else:
        # KVM slower than twice TCG is of no use; never wait longer than configured.
        limit = float(config.kvm_probe_timeout)
        deadline = min(limit, max(3.0, 2 * tcg.seconds)) if tcg.booted else limit
        kvm = run_probe(probe_argv(config.path, config.kernel, "kvm"), "kvm", deadline)
    if kvm.booted and (not tcg.booted or kvm.seconds <= tcg.seconds):
        return AcceleratorChoice("kvm", f"KVM booted the probe guest in {kvm.seconds:.2f} s", kvm, tcg)
    if not tcg.booted:
        raise AcceleratorError(f"no accelerator works: kvm: {kvm.detail}; tcg: {tcg.detail}")
    why = kvm.detail if not kvm.booted else f"KVM booted in {kvm.seconds:.2f} s, slower than TCG"
    return AcceleratorChoice("tcg", f"KVM is unusable ({why}); TCG booted the probe guest in "
                             f"{tcg.seconds:.2f} s", kvm, tcg)


def _cache_key(config: HypervisorConfig) -> dict[str, object]:
    def stamp(path: str) -> list[float]:
        try:
            st = os.stat(path)
        except OSError:
            return []
        return [st.st_mtime, float(st.st_size)]
    return {"boot_id": boot_id(), "qemu": [config.path, *stamp(config.path)],
            "kernel": [config.kernel, *stamp(config.kernel)], "timeout": config.kvm_probe_timeout}


def _read_cache(path: Path, key: dict[str, object]) -> AcceleratorChoice | None:
    try:
        data = json.loads(path.read_text())
        if data["key"] != key:
            return None
        choice = data["choice"]
        probes = {name: ProbeResult(**choice[name]) if choice[name] else None for name in ("kvm", "tcg")}
        return AcceleratorChoice(choice["accelerator"], choice["reason"], cached=True, **probes)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(path: Path, key: dict[str, object], choice: AcceleratorChoice) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "choice": asdict(choice)}, indent=2) + "\n")
    tmp.replace(path)


def cached_choice(config: HypervisorConfig,
                  cache_file: Path = DEFAULT_CACHE_FILE) -> AcceleratorChoice | None:
    """The cached probe result for this host boot, QEMU and kernel, or None (never probes)."""
    return _read_cache(cache_file, _cache_key(config))


def choose_accelerator(config: HypervisorConfig, *, cache_file: Path = DEFAULT_CACHE_FILE,
                       refresh: bool = False) -> AcceleratorChoice:
    """The accelerator sandboxes use: as configured, or for ``auto`` the cached probe result.

    The probe result is cached in ``cache_file`` keyed by host boot, QEMU and kernel, so a
    sandbox start does not pay for it; ``refresh`` probes again.

    Raises:
        AcceleratorError: when ``auto`` finds no working accelerator.
    """
    if config.accelerator != "auto":
        return AcceleratorChoice(config.accelerator, "set by configuration (accelerator)")
    key = _cache_key(config)
    if not refresh and (cached := _read_cache(cache_file, key)) is not None:
        return cached
    choice = probe_accelerator(config)
    _write_cache(cache_file, key, choice)
    return choice

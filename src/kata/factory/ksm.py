"""Kernel samepage merging for the VMs' RAM: turn it on, scan fast after a sandbox starts, then slowly.

QEMU marks guest RAM mergeable (``mem-merge`` is on by default), but KSM merges only private anonymous
pages: a template clone's copy-on-write pages and ``memory-backend-ram`` are, memfd and any share=on
RAM (what virtio-fs needs) are not. Throttling as Kata's ksm-throttler does: a burst of fast scanning
when a sandbox has started (its guest pages settle within seconds), then a slow background rate.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from kata.errors import HostError

__all__ = ["BURST", "BURST_SECONDS", "IDLE", "KSM_DIR", "KsmRate", "KsmStatus", "ksm_status", "set_ksm", "throttle_ksm"]

_log = logging.getLogger("kata.factory")
KSM_DIR = Path("/sys/kernel/mm/ksm")


@dataclass(frozen=True)
class KsmRate:
    """How fast ksmd scans: ``pages_to_scan`` pages every ``sleep_millisecs``."""

    pages_to_scan: int
    sleep_millisecs: int


# Measured here (2 cores): the burst merges ten idle VMs within ~20 s at ~25 % of one core; the idle
# rate costs under 1 %.
BURST = KsmRate(pages_to_scan=2000, sleep_millisecs=20)
IDLE = KsmRate(pages_to_scan=100, sleep_millisecs=200)
BURST_SECONDS = 30.0


@dataclass(frozen=True)
class KsmStatus:
    """The kernel's KSM state; ``saved_mib`` is what merging saves now (pages_sharing pages)."""

    available: bool
    run: int = 0
    pages_to_scan: int = 0
    sleep_millisecs: int = 0
    pages_shared: int = 0
    pages_sharing: int = 0
    full_scans: int = 0

    @property
    def saved_mib(self) -> float:
        """MiB no longer held twice thanks to merging."""
        return self.pages_sharing * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def _read(root: Path, name: str) -> int:
    return int((root / name).read_text().strip())


def ksm_status(root: Path = KSM_DIR) -> KsmStatus:
    """The KSM counters and settings (``available`` False without /sys/kernel/mm/ksm)."""
    try:
        return KsmStatus(True, *(_read(root, n) for n in ("run", "pages_to_scan", "sleep_millisecs", "pages_shared",
                                                           "pages_sharing", "full_scans")))
    except (OSError, ValueError):
        return KsmStatus(False)


def set_ksm(rate: KsmRate | None, root: Path = KSM_DIR) -> None:
    """Run KSM at ``rate``, or stop it (None: ``run`` 0, merged pages stay merged).

    Raises:
        HostError: /sys/kernel/mm/ksm is missing or not writable.
    """
    values = {"run": 0} if rate is None else {"pages_to_scan": rate.pages_to_scan,
                                              "sleep_millisecs": rate.sleep_millisecs, "run": 1}
    try:
        for name, value in values.items():
            (root / name).write_text(f"{value}\n")
    except OSError as exc:
        raise HostError(f"ksm: cannot write {root}: {exc.strerror}") from exc


async def throttle_ksm(root: Path = KSM_DIR, burst_seconds: float = BURST_SECONDS) -> None:
    """A burst of fast scanning, then the idle rate (run it as a task when a sandbox has started).

    Raises:
        HostError: KSM cannot be controlled here.
    """
    set_ksm(BURST, root)
    try:
        await asyncio.sleep(burst_seconds)
    finally:
        try:
            set_ksm(IDLE, root)
        except HostError as exc:
            _log.warning("%s", exc)

"""The shim's Prometheus metrics (``/metrics`` of the shim-monitor socket), as Kata's shim names them:
its own process, the sandbox's tasks, the VMM's and virtiofsd's processes, then the guest agent's.
Imported on the first ``/metrics`` request only."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from kata.errors import KataError
from kata.shim.monitor import MonitorSource

__all__ = ["CONTENT_TYPE", "SandboxCollector", "agent_metrics_text", "metrics_text", "new_registry"]

_log = logging.getLogger("kata.shim")
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
AGENT_METRICS_TIMEOUT = 5.0
# /proc/<pid>/status lines reported as kata_*_proc_status{item=...}, as Kata's SetGaugeVecProcStatus
# (sizes in bytes, as Go's procfs gives them).
STATUS_ITEMS = {"VmPeak": "vmpeak", "VmSize": "vmsize", "VmLck": "vmlck", "VmPin": "vmpin", "VmHWM": "vmhwm",
                "VmRSS": "vmrss", "RssAnon": "rssanon", "RssFile": "rssfile", "RssShmem": "rssshmem",
                "VmData": "vmdata", "VmStk": "vmstk", "VmExe": "vmexe", "VmLib": "vmlib", "VmPTE": "vmpte",
                "VmPMD": "vmpmd", "VmSwap": "vmswap", "HugetlbPages": "hugetlbpages",
                "voluntary_ctxt_switches": "voluntary_ctxt_switches",
                "nonvoluntary_ctxt_switches": "nonvoluntary_ctxt_switches"}
STAT_ITEMS = {"utime": 11, "stime": 12, "cutime": 13, "cstime": 14}  # 0-based fields after "pid (comm)"
STAT_THREADS = 17


def new_registry(source: MonitorSource) -> CollectorRegistry:
    """A registry with the shim's process collector and the sandbox's gauges of ``source``."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    registry.register(SandboxCollector(source))
    return registry


def _proc_status(pid: int) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in STATUS_ITEMS and value.split():
            number, *unit = value.split()
            found[STATUS_ITEMS[key]] = float(number) * (1024 if unit == ["kB"] else 1)
    return found


def _proc_stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def _process_metrics(prefix: str, pid: int, what: str) -> Iterator[Metric]:
    """Kata's per-process gauges (threads, fds, proc_status, proc_stat) of ``pid`` as ``prefix``_*."""
    try:
        stat, status = _proc_stat(pid), _proc_status(pid)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return  # the process is gone (or not ours): nothing to report
    yield GaugeMetricFamily(f"{prefix}_threads", f"{what} process threads.", value=float(stat[STAT_THREADS]))
    yield GaugeMetricFamily(f"{prefix}_fds", f"Open FDs for {what}.", value=float(fds))
    status_family = GaugeMetricFamily(f"{prefix}_proc_status", f"{what} process status.", labels=["item"])
    for item, value in status.items():
        status_family.add_metric([item], value)
    yield status_family
    stat_family = GaugeMetricFamily(f"{prefix}_proc_stat", f"{what} process statistics.", labels=["item"])
    for item, index in STAT_ITEMS.items():
        stat_family.add_metric([item], float(stat[index]))
    yield stat_family


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class SandboxCollector(Collector):
    """The sandbox-level gauges: the shim's tasks and threads, the VMM's and virtiofsd's processes."""

    def __init__(self, source: MonitorSource) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("kata_shim_tasks", "Tasks (containers) served by this shim.",
                                value=float(self.source.task_count()))
        yield from _process_metrics("kata_shim", os.getpid(), "Kata containerd shim v2")
        pids = self.source.vmm_pids()
        if pids:
            yield from _process_metrics("kata_hypervisor", pids[0], "Hypervisor")
        for pid in pids[1:]:
            if "virtiofsd" in _comm(pid):
                yield from _process_metrics("kata_virtiofsd", pid, "Virtiofsd")
                break


def _agent_line(line: str) -> str:
    words = line.split(" ", 3)
    if line.startswith("# ") and len(words) > 2 and words[1] in ("HELP", "TYPE"):
        if words[2].startswith(("go_", "process_")):
            words[2] = f"kata_agent_{words[2]}"
        return " ".join(words)
    return f"kata_agent_{line}" if line.startswith(("go_", "process_")) else line


def agent_metrics_text(text: str) -> str:
    """The agent's families as Kata passes them on: ``go_``/``process_`` ones renamed ``kata_agent_...``
    (so they do not clash with the shim's own process metrics); blank lines dropped."""
    return "".join(f"{_agent_line(line)}\n" for line in text.splitlines() if line.strip())


async def metrics_text(source: MonitorSource, registry: CollectorRegistry) -> bytes:
    """The shim's and sandbox's metrics, then the agent's (left out, with a log line, when it cannot be
    asked)."""
    text = generate_latest(registry)
    try:
        agent = await asyncio.wait_for(source.agent_metrics(), AGENT_METRICS_TIMEOUT)
    except (KataError, TimeoutError) as exc:
        _log.warning("agent metrics unavailable: %s", exc)
        return text
    return text + agent_metrics_text(agent).encode()

"""Shared helpers of the benchmarks: statistics, tables, machine facts, results (JSON + PNG), PSS, process trees."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "docs" / "bench"
VENV_BIN = Path(sys.executable).parent
GUEST_KERNEL_INFO = Path("/var/cache/pykata/guest/kernel.json")

T = TypeVar("T")

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the benches reuse the tests' bundles, images and containerd helper


# Statistics.


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of nothing")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """p50/p90/min/max of a sample."""

    n: int
    p50: float
    p90: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(len(values), percentile(values, 50), percentile(values, 90), min(values), max(values))

    def to_json(self) -> dict[str, float]:
        return {"n": self.n, "p50": self.p50, "p90": self.p90, "min": self.low, "max": self.high}

    def cell(self, scale: float = 1.0, unit: str = "s", digits: int = 2) -> str:
        """``p50 / p90 (min-max)`` in ``unit`` after multiplying by ``scale``."""
        f = f"{{:.{digits}f}}"
        return (f"{f.format(self.p50 * scale)} / {f.format(self.p90 * scale)} {unit} "
                f"({f.format(self.low * scale)}-{f.format(self.high * scale)})")


def summarize(samples: Mapping[str, Sequence[float]]) -> dict[str, Summary]:
    """A Summary per non-empty sample."""
    return {name: Summary.of(values) for name, values in samples.items() if values}


# Tables.


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table (what docs/performance.md pastes)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(title: str, headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Print ``title`` and the table; return the table text."""
    text = format_table(headers, rows)
    print(f"\n{title}\n\n{text}\n", flush=True)
    return text


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries the tables)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# Machine facts.


def _first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stdout
    except OSError:
        return "?"
    return out.splitlines()[0].strip() if out else "?"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _mem_total_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / (1 << 20)
    return 0.0


def _accelerator() -> str:
    try:
        from kata.config import load_config
        from kata.hypervisor.accel import choose_accelerator

        return str(choose_accelerator(load_config().config.hypervisor).accelerator)
    except Exception as exc:  # facts only: never fail a bench for them
        return f"? ({exc})"


def machine_facts() -> dict[str, Any]:
    """What the numbers were taken on."""
    guest = json.loads(GUEST_KERNEL_INFO.read_text()) if GUEST_KERNEL_INFO.exists() else {}
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(_mem_total_gib(), 1),
        "host_kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "qemu": _first_line(["qemu-system-x86_64", "--version"]),
        "guest_kernel": guest.get("release", "?"),
        "accelerator": _accelerator(),
        "load_average": os.getloadavg(),
    }


def print_facts(facts: Mapping[str, Any]) -> None:
    print("machine: " + ", ".join(f"{key} {value}" for key, value in facts.items()), flush=True)


# Results.


def add_common_args(parser: argparse.ArgumentParser, runs: int) -> None:
    """--runs, --out, --no-write (quick development runs leave docs/bench alone)."""
    parser.add_argument("--runs", type=int, default=runs, help=f"repetitions (default {runs})")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where NAME.json and NAME.png go")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")


def write_results(args: argparse.Namespace, name: str, data: Mapping[str, Any],
                  plot: Callable[[Any], None] | None = None, size: tuple[float, float] = (8, 4.5)) -> None:
    """``<out>/<name>.json`` (``data`` + machine facts) and ``<out>/<name>.png`` drawn by ``plot(figure)``."""
    if args.no_write:
        return
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "argv": sys.argv[1:], **data}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=size, dpi=100)
        plot(figure)
        figure.tight_layout()
        figure.savefig(out / f"{name}.png")
        plt.close(figure)
    progress(f"wrote {out / name}.json" + (" and .png" if plot else ""))


def _json_default(value: object) -> object:
    if isinstance(value, Summary):
        return value.to_json()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


# Processes and memory.


def ppid_of(pid: int) -> int | None:
    """The parent pid from /proc/PID/stat, or None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (one scan of /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = ppid_of(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def comm(pid: int) -> str:
    """The process's command name (``?`` when it is gone)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def pss_kib(pid: int) -> int:
    """Proportional set size of one process in KiB (/proc/PID/smaps_rollup), 0 when it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def pids_matching(predicate: Callable[[int], bool]) -> list[int]:
    """Every process for which ``predicate(pid)`` holds."""
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit() and predicate(int(entry.name))]


# Robustness.


def retry(step: Callable[[], T], attempts: int = 3, what: str = "run") -> T:
    """Run ``step`` again when it fails: other sessions' test suites kill QEMUs they did not start."""
    for attempt in range(1, attempts + 1):
        try:
            return step()
        except Exception as exc:
            if attempt == attempts:
                raise
            progress(f"{what} failed ({type(exc).__name__}: {exc}), retrying")
    raise AssertionError("unreachable")


def top_mappings(pid: int, count: int = 12) -> list[tuple[int, int, str]]:
    """The ``count`` mappings of ``pid`` with the largest PSS: (PSS KiB, RSS KiB, name) from /proc/PID/smaps."""
    rows: list[tuple[int, int, str]] = []
    name, rss = "", 0
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        head = line.split(maxsplit=5)
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            start, end = (int(x, 16) for x in head[0].split("-"))
            name = f"{head[5] if len(head) > 5 else '[anon]'} ({(end - start) >> 10} KiB mapped)"
        elif head[0] == "Rss:":
            rss = int(head[1])
        elif head[0] == "Pss:":
            rows.append((int(head[1]), rss, name))
    return sorted(rows, reverse=True)[:count]

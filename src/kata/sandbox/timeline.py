"""The startup timeline: named phases with monotonic timestamps, kept in timeline.json."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kata.sandbox.errors import SandboxError
from kata.sandbox.persist import locked, read_json, write_json

__all__ = [
    "AGENT_REACHABLE",
    "CONFIG_LOADED",
    "CONTAINER_CREATED",
    "CONTAINER_STARTED",
    "PHASES",
    "SANDBOX_CREATED",
    "VM_SPAWNED",
    "Phase",
    "Timeline",
    "append_phase",
    "format_timeline",
    "load_timeline",
]

CONFIG_LOADED = "config loaded"
VM_SPAWNED = "VM spawned"
AGENT_REACHABLE = "agent reachable"
SANDBOX_CREATED = "sandbox created"
CONTAINER_CREATED = "container created"
CONTAINER_STARTED = "container started"
PHASES = (CONFIG_LOADED, VM_SPAWNED, AGENT_REACHABLE, SANDBOX_CREATED, CONTAINER_CREATED, CONTAINER_STARTED)


@dataclass(frozen=True)
class Phase:
    """One phase reached: its name, CLOCK_MONOTONIC time (system-wide, so comparable between
    processes of one boot) and the container it concerns ("" for the sandbox)."""

    name: str
    monotonic: float
    container: str = ""


@dataclass(frozen=True)
class Timeline:
    """A sandbox's startup: ``origin`` is when create was called (monotonic and wall clock)."""

    sandbox_id: str
    origin: float
    wall_origin: float
    phases: tuple[Phase, ...] = field(default=())

    @classmethod
    def begin(cls, sandbox_id: str = "") -> Timeline:
        """A timeline starting now."""
        return cls(sandbox_id, time.monotonic(), time.time())

    def mark(self, name: str, container: str = "", at: float | None = None) -> Timeline:
        """This timeline with phase ``name`` reached now (or at monotonic time ``at``)."""
        phase = Phase(name, time.monotonic() if at is None else at, container)
        return replace(self, phases=(*self.phases, phase))

    def elapsed(self, name: str, container: str = "") -> float | None:
        """Seconds from the origin to the first phase ``name`` (of ``container``), or None."""
        found = next((p for p in self.phases if p.name == name and p.container == container), None)
        return None if found is None else found.monotonic - self.origin

    def to_json(self) -> dict[str, Any]:
        """The timeline as a JSON object (each phase also carries its offset from the origin)."""
        return {"sandbox": self.sandbox_id, "origin_monotonic": self.origin, "origin_wall": self.wall_origin,
                "phases": [{"name": p.name, "container": p.container, "monotonic": p.monotonic,
                            "seconds": round(p.monotonic - self.origin, 6)} for p in self.phases]}

    @classmethod
    def from_json(cls, data: Any, source: str = "timeline.json") -> Timeline:
        """The timeline of a parsed timeline.json.

        Raises:
            SandboxError: a field is missing or wrong.
        """
        try:
            phases = tuple(Phase(str(p["name"]), float(p["monotonic"]), str(p.get("container", "")))
                           for p in data["phases"])
            return cls(str(data["sandbox"]), float(data["origin_monotonic"]), float(data["origin_wall"]), phases)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SandboxError(f"{source}: malformed timeline ({type(exc).__name__}: {exc})") from exc


def load_timeline(path: Path) -> Timeline:
    """The timeline stored in ``path``.

    Raises:
        SandboxNotFoundError: there is none.
        SandboxError: it cannot be read or is malformed.
    """
    return Timeline.from_json(read_json(path), str(path))


def append_phase(path: Path, name: str, container: str = "", at: float | None = None) -> Timeline:
    """Add a phase to the timeline in ``path`` (under the sandbox dir's lock: writers may be processes).

    Raises:
        SandboxNotFoundError: there is no timeline yet.
        SandboxError: it cannot be read, is malformed, or cannot be written.
    """
    with locked(path.parent):
        timeline = load_timeline(path).mark(name, container, at)
        write_json(path, timeline.to_json())
    return timeline


def format_timeline(timeline: Timeline) -> str:
    """A table: phase, container, milliseconds since create, milliseconds since the previous phase."""
    rows: list[Sequence[str]] = [("PHASE", "CONTAINER", "AT (ms)", "STEP (ms)")]
    previous = timeline.origin
    for phase in sorted(timeline.phases, key=lambda p: p.monotonic):
        rows.append((phase.name, phase.container[:12], f"{(phase.monotonic - timeline.origin) * 1000:.1f}",
                     f"{(phase.monotonic - previous) * 1000:.1f}"))
        previous = phase.monotonic
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}" for r in rows]
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(timeline.wall_origin))
    return f"sandbox {timeline.sandbox_id} (create called {started})\n" + "\n".join(line.rstrip() for line in lines)

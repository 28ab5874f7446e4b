"""Progress of an image build: named steps with timings, silent by default, rich on a terminal."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["Reporter", "RichReporter", "Step"]


class Step:
    """One running build step; the builder may set ``detail`` (shown when the step is done)."""

    __slots__ = ("detail", "title")

    def __init__(self, title: str) -> None:
        self.title = title
        self.detail = ""


class Reporter:
    """Collects step timings (``timings``: title -> seconds) and reports nothing."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[Step]:
        """Time the block as the step ``title``."""
        step = Step(title)
        started = time.monotonic()
        self.started(step)
        try:
            yield step
        except BaseException:
            self.ended(step, time.monotonic() - started, ok=False)
            raise
        self.timings[title] = round(time.monotonic() - started, 3)
        self.ended(step, self.timings[title], ok=True)

    def started(self, step: Step) -> None:
        """Hook: a step began."""

    def ended(self, step: Step, seconds: float, *, ok: bool) -> None:
        """Hook: a step ended (``ok`` False when it raised)."""

    def note(self, text: str) -> None:
        """Hook: a remark worth showing (a cache hit, a skipped module)."""


class RichReporter(Reporter):
    """A spinner while each step runs, then one line per step with its time (on stderr)."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console

        self._console = Console(stderr=True)
        self._status: Any = None

    def started(self, step: Step) -> None:
        self._status = self._console.status(f"{step.title} ...")
        self._status.start()

    def ended(self, step: Step, seconds: float, *, ok: bool) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        detail = f" [dim]{step.detail}[/dim]" if step.detail else ""
        self._console.print(f"{mark} {step.title}{detail} [dim]({seconds:.2f} s)[/dim]", highlight=False)

    def note(self, text: str) -> None:
        self._console.print(f"  {text}", highlight=False)

"""Signal names and numbers as ``runc kill`` takes them (pure)."""

from __future__ import annotations

import signal

from kata.errors import UsageError

__all__ = ["parse_signal"]

_MAX_SIGNAL = 64  # SIGRTMAX on Linux


def parse_signal(raw: str) -> int:
    """``15``, ``TERM``, ``SIGTERM`` or ``sigterm`` -> 15 (runc's parseSignal; also ``RTMIN+3``; ``0``
    only checks that the process exists, as kill(2)).

    Raises:
        UsageError: an unknown name or a number out of range.
    """
    text = raw.strip()
    if text.isdigit():
        number = int(text)
        if 0 <= number <= _MAX_SIGNAL:
            return number
        raise UsageError(f"unknown signal {raw!r}")
    name = text.upper()
    if not name.startswith("SIG"):
        name = f"SIG{name}"
    base, plus, offset = name.partition("+")
    try:
        number = int(signal.Signals[base]) if base in signal.Signals.__members__ else _realtime(base)
        if plus:
            number += int(offset)
    except (KeyError, ValueError):
        raise UsageError(f"unknown signal {raw!r}") from None
    if not 0 < number <= _MAX_SIGNAL:
        raise UsageError(f"unknown signal {raw!r}")
    return number


def _realtime(name: str) -> int:
    if name == "SIGRTMIN":
        return signal.SIGRTMIN
    if name == "SIGRTMAX":
        return signal.SIGRTMAX
    raise KeyError(name)


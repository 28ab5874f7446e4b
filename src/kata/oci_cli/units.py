"""Go's duration strings and Docker's byte sizes, as runc's flags take them (pure)."""

from __future__ import annotations

import re

from kata.errors import UsageError

__all__ = ["parse_bytes", "parse_duration"]

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?", re.IGNORECASE)
_BINARY = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_duration(text: str) -> float:
    """``5s``, ``100ms``, ``1m30s`` (Go's time.ParseDuration) -> seconds.

    Raises:
        UsageError: not a duration.
    """
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        if text == "0":
            return 0.0
        raise UsageError(f"invalid duration {text!r}")
    return total


def parse_bytes(text: str) -> int:
    """``512m``, ``1g``, ``1024`` (docker/go-units RAMInBytes: binary multiples) -> bytes; ``-1`` is -1.

    Raises:
        UsageError: not a size.
    """
    if text.strip() == "-1":
        return -1
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"invalid size {text!r}")
    return int(float(match.group(1)) * _BINARY[match.group(2).lower()])

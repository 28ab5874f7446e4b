"""Console log of the guest: logfmt lines on stderr (/dev/console), carrying the sandbox id once known."""

from __future__ import annotations

import os
import time

__all__ = ["LEVELS", "GuestLog"]

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@")


def _value(value: object) -> str:
    text = str(value)
    if text and all(c in SAFE for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class GuestLog:
    """``time=<uptime> level=info source=agent pid=1 sandbox=<id> msg="..." key=value`` lines."""

    def __init__(self, fd: int = 2, level: str = "info") -> None:
        self.fd = fd
        self.threshold = LEVELS[level]
        self.sandbox_id = ""

    def set_level(self, level: str) -> None:
        """Log records of ``level`` and above (unknown names keep the current level)."""
        self.threshold = LEVELS.get(level, self.threshold)

    def enabled(self, level: str) -> bool:
        """Whether records of ``level`` are written."""
        return LEVELS[level] >= self.threshold

    def format(self, level: str, msg: str, fields: dict[str, object]) -> str:
        parts = [f"time={time.monotonic():.3f}", f"level={level}", "source=agent", f"pid={os.getpid()}"]
        if self.sandbox_id:
            parts.append(f"sandbox={_value(self.sandbox_id)}")
        parts.append(f"msg={_value(msg)}")
        parts += [f"{key}={_value(value)}" for key, value in fields.items()]
        return " ".join(parts) + "\n"

    def log(self, level: str, msg: str, fields: dict[str, object]) -> None:
        if LEVELS[level] < self.threshold:
            return
        try:  # noqa: SIM105 - contextlib is one more import paid at every boot
            os.write(self.fd, self.format(level, msg, fields).encode(errors="replace"))
        except OSError:
            pass  # no console: nothing better to do with a log line

    def debug(self, msg: str, **fields: object) -> None:
        self.log("debug", msg, fields)

    def info(self, msg: str, **fields: object) -> None:
        self.log("info", msg, fields)

    def warning(self, msg: str, **fields: object) -> None:
        self.log("warning", msg, fields)

    def error(self, msg: str, **fields: object) -> None:
        self.log("error", msg, fields)

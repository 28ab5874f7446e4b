"""Structured logging: logfmt-style text or JSON lines, as runc's --log-format offers."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

__all__ = ["FORMATS", "JsonFormatter", "TextFormatter", "configure", "fields", "record_fields"]

FORMATS = ("text", "json")
ROOT_LOGGER = "kata"


def fields(**values: object) -> dict[str, dict[str, object]]:
    """``extra=`` argument attaching key=value fields to one log record."""
    return {"fields": values}


def record_fields(record: logging.LogRecord) -> dict[str, object]:
    """The structured fields of a record (from ``extra=fields(...)``), plus the logger name."""
    found = getattr(record, "fields", None)
    extra: dict[str, object] = dict(found) if isinstance(found, Mapping) else {}
    return {"source": record.name, **extra}


def _timestamp(record: logging.LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs * 1000):06d}Z"


def _message(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info:
        text = f"{text}: {record.exc_info[1]}"
    return text


def _logfmt(value: object) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "-_./:@" for c in text):
        return text
    return json.dumps(text)


class TextFormatter(logging.Formatter):
    """``time="..." level=info msg="..." key=value`` lines (logrus text style)."""

    def format(self, record: logging.LogRecord) -> str:
        parts: dict[str, object] = {"time": _timestamp(record), "level": record.levelname.lower(),
                                    "msg": _message(record)}
        parts.update({k: v for k, v in record_fields(record).items() if k not in parts})
        return " ".join(f"{key}={_logfmt(value)}" for key, value in parts.items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: level, msg, time and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"level": record.levelname.lower(), "msg": _message(record),
                                "time": _timestamp(record)}
        data.update({k: v for k, v in record_fields(record).items() if k not in data})
        return json.dumps(data, default=str)


def configure(*, debug: bool = False, log_file: str | None = None, log_format: str = "text",
              stream: IO[str] | None = None) -> logging.Handler:
    """Send pykata's log records to ``log_file`` (appending) or ``stream`` (default stderr).

    Without ``debug`` only warnings and errors are written.

    Raises:
        ValueError: for an unknown ``log_format``.
        OSError: when ``log_file`` cannot be opened.
    """
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r}")
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logger = logging.getLogger(ROOT_LOGGER)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    logger.propagate = False
    return handler

"""Structured log formats: logfmt text and JSON lines."""

from __future__ import annotations

import io
import json
import logging

from kata.log import configure, fields


def emit(log_format: str, debug: bool = True) -> str:
    stream = io.StringIO()
    handler = configure(debug=debug, log_format=log_format, stream=stream)
    try:
        logging.getLogger("kata.test").info("vm started", extra=fields(sandbox="sb1", pid=42))
        logging.getLogger("kata.test").warning("odd value x=1")
    finally:
        logging.getLogger("kata").removeHandler(handler)
    return stream.getvalue()


def test_text_lines_are_logfmt_with_fields() -> None:
    first, second = emit("text").splitlines()
    assert first.startswith("time=")
    assert " level=info msg=\"vm started\" source=kata.test sandbox=sb1 pid=42" in first
    assert 'level=warning msg="odd value x=1"' in second


def test_json_lines_carry_fields() -> None:
    record = json.loads(emit("json").splitlines()[0])
    assert record["level"] == "info"
    assert record["msg"] == "vm started"
    assert record["sandbox"] == "sb1"
    assert record["pid"] == 42
    assert record["time"].endswith("Z")


def test_without_debug_only_warnings_are_written() -> None:
    lines = emit("text", debug=False).splitlines()
    assert len(lines) == 1
    assert "level=warning" in lines[0]

"""Atomic JSON files (temp + fsync + rename + directory fsync) and a per-sandbox lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kata.sandbox.errors import SandboxError, SandboxNotFoundError

__all__ = ["locked", "read_json", "write_json"]


def write_json(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON: readers see the old or the new file, never a torn one.

    Raises:
        SandboxError: the file cannot be written.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise SandboxError(f"write {path}: {exc.strerror}") from exc


def read_json(path: Path) -> Any:
    """The JSON document in ``path``.

    Raises:
        SandboxNotFoundError: the file does not exist.
        SandboxError: it cannot be read or is not JSON.
    """
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise SandboxNotFoundError(f"{path}: no such file") from exc
    except OSError as exc:
        raise SandboxError(f"read {path}: {exc.strerror}") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SandboxError(f"{path}: not valid JSON: {exc}") from exc


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``directory`` (serializes read-modify-write between processes).

    Raises:
        SandboxError: the directory cannot be opened.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxError(f"lock {directory}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

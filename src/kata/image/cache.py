"""A content-addressed build cache: one directory per hash of a build's inputs, filled atomically."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from kata.errors import ImageError

__all__ = ["BuildCache", "cache_key", "hash_files", "replace_symlink", "write_result"]

KEY_LENGTH = 16
RESULT_FILE = "build.json"


def cache_key(inputs: Mapping[str, str]) -> str:
    """A short stable hash of a build's inputs (names and values; order does not matter)."""
    canonical = json.dumps(dict(sorted(inputs.items())), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:KEY_LENGTH]


def hash_files(root: Path, paths: Iterable[Path]) -> str:
    """sha256 over the relative names and contents of ``paths`` under ``root``, in sorted order.

    Raises:
        OSError: when a file cannot be read.
    """
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def replace_symlink(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` atomically (readers see the old or the new target, never none)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)


class BuildCache:
    """Builds of one kind under ``root``: ``root/<key>/`` holds the outputs and ``build.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def entry(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str) -> dict[str, object] | None:
        """The recorded result of a finished build with ``key``, or None."""
        try:
            result: dict[str, object] = json.loads((self.entry(key) / RESULT_FILE).read_text())
        except (OSError, ValueError):
            return None
        return result

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cache's lock (one builder at a time; others wait).

        Raises:
            ImageError: when the cache directory cannot be created.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ImageError(f"cache {self.root}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def staging(self, key: str) -> Iterator[Path]:
        """A scratch directory that becomes the entry for ``key`` if the block succeeds.

        The block must write ``build.json`` last; on error the scratch directory is removed.
        """
        stage = self.root / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        try:
            yield stage
            if not (stage / RESULT_FILE).exists():
                raise ImageError(f"build {key} finished without {RESULT_FILE}")
            shutil.rmtree(self.entry(key), ignore_errors=True)
            stage.rename(self.entry(key))
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def prune(self, keep: int, protect: Iterable[str] = ()) -> list[str]:
        """Remove all but the ``keep`` newest entries (never those in ``protect``); return their keys."""
        protected = set(protect)
        entries = sorted((p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: p.stat().st_mtime, reverse=True)
        removed = []
        for path in entries[keep:]:
            if path.name not in protected:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        return removed


def write_result(stage: Path, result: Mapping[str, object]) -> None:
    """Record a build's result as the last step of :meth:`BuildCache.staging`."""
    tmp = stage / f"{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    tmp.replace(stage / RESULT_FILE)

"""Compiled code for the methods dataclasses and namedtuples generate, recorded into the image.

dataclasses writes each class's ``__init__``, ``__repr__``, ``__eq__``, ... as source text and
compiles it when the class is created; namedtuple does the same for ``__new__``. Under TCG that
compiling is most of what importing kata.oci and the runtime costs. The image builder imports the
agent's modules once with a recorder in place and stores every generated source with its code
object (marshal, by the guest's own python3.11); in the guest :func:`install` gives dataclasses and
namedtuple the recorded code instead of compiling. A source that is not in the cache is compiled as
usual: a stale cache costs time, never correctness.

Recording: ``python3.11 -I -S -B -c "...; codecache.main(argv)" OUT MODULE...`` (see kata.image).
"""

from __future__ import annotations

import marshal
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import CodeType
    from typing import Any

__all__ = ["CACHE_FILE", "CachedCompiler", "install", "main", "record"]

# Written by the image builder next to the agent's packages.
CACHE_FILE = "/usr/lib/kata-agent/codecache.marshal"
# Modules whose generated code goes through the cache, and the builtin each one calls with source.
PATCHED = {"dataclasses": "exec", "collections": "eval"}


class CachedCompiler:
    """Stands in for ``exec``/``eval`` in a module that generates code: source text -> cached code.

    ``compile`` gets ``dont_inherit=True``: the builtin called from that module would not inherit
    our ``from __future__`` flags either.
    """

    def __init__(self, mode: str, cache: dict[tuple[str, str], CodeType], *, recording: bool = False) -> None:
        self.mode = mode
        self.cache = cache
        self.recording = recording
        self.misses = 0
        self._run = exec if mode == "exec" else eval

    def __call__(self, source: Any, globals: dict[str, Any] | None = None,
                 locals: dict[str, Any] | None = None) -> Any:
        if isinstance(source, str):
            key = (self.mode, source)
            code = self.cache.get(key)
            if code is None:
                code = compile(source, "<string>", self.mode, dont_inherit=True)
                self.misses += 1
                if self.recording:
                    self.cache[key] = code
            source = code
        return self._run(source, globals, locals)


def _patch(module_name: str, cache: dict[tuple[str, str], CodeType], recording: bool) -> None:
    builtin = PATCHED[module_name]
    module = __import__(module_name)
    # A module global shadows the builtin of that name for the module's own code.
    setattr(module, builtin, CachedCompiler(builtin, cache, recording=recording))


_loaded: dict[str, dict[tuple[str, str], CodeType]] = {}


def install(modules: Iterable[str] = tuple(PATCHED), path: str = CACHE_FILE) -> int:
    """Give ``modules`` (of :data:`PATCHED`; each is imported) the recorded code; returns the cache's size.

    The cache is read once. A missing or unreadable cache installs nothing: classes are then
    compiled as usual.
    """
    cache = _loaded.get(path)
    if cache is None:
        try:
            with open(path, "rb") as fh:
                cache = marshal.load(fh)
        except (OSError, EOFError, ValueError, TypeError):
            return 0
        if not isinstance(cache, dict):
            return 0
        _loaded[path] = cache
    for name in modules:
        _patch(name, cache, recording=False)
    return len(cache)


def record() -> dict[tuple[str, str], CodeType]:
    """Start recording every source dataclasses and namedtuple compile; returns the (growing) cache."""
    cache: dict[tuple[str, str], CodeType] = {}
    for name in PATCHED:
        _patch(name, cache, recording=True)
    return cache


def main(argv: list[str]) -> int:
    """``OUT MODULE...``: import the modules while recording, write the cache to OUT (marshal)."""
    out, *modules = argv
    cache = record()
    failed = []
    for name in modules:
        try:
            __import__(name)
        except Exception as exc:  # the import probe reports these properly; skip them here
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    with open(out, "wb") as fh:
        marshal.dump(cache, fh)
    sys.stdout.write(f"{len(cache)} sources recorded\n")
    for line in failed:
        sys.stdout.write(f"!error\t{line}\n")
    return 0

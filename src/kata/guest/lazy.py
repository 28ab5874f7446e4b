"""Stand-ins for modules the agent's imports name but the guest rarely or never uses.

A stand-in sits in ``sys.modules`` until an attribute is first read from it; it then imports the
real module and takes over its namespace, so code holding the stand-in sees the real thing.
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["UNUSED_IN_GUEST", "DeferredModule", "defer"]

# protobuf imports its pure-Python message implementation (and through it text_format, the
# pure-Python decoder and encoder, pickle, ...) even when the upb backend does all the work:
# about 0.25 s under TCG for code the guest never runs; its well-known types import calendar (and
# locale) for Timestamp.FromDatetime only. dataclasses imports inspect (with ast, dis, tokenize,
# ...: ~0.15 s) only to write a docstring for classes that have none.
UNUSED_IN_GUEST = ("google.protobuf.internal.python_message", "calendar", "inspect")

_lock = threading.Lock()


class DeferredModule(ModuleType):
    """A module imported on first attribute access (then it is the real module's namespace)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # import machinery probing (__path__, __spec__, ...): not a use
        return getattr(_load(self), name)


def _load(stand_in: DeferredModule) -> ModuleType:
    import importlib

    name = stand_in.__name__
    with _lock:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        module = importlib.import_module(name)
        stand_in.__dict__.update(module.__dict__)
    return module


def defer(*names: str) -> None:
    """Put stand-ins for ``names`` (full module names) into ``sys.modules``, unless already imported."""
    for name in names:
        if name not in sys.modules:
            sys.modules[name] = DeferredModule(name)

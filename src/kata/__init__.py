"""pykata: Kata Containers in Python, every container in its own lightweight VM."""

from __future__ import annotations

TYPE_CHECKING = False  # not `from typing import`: typing costs PID 1 of the guest 0.1-0.2 s

if TYPE_CHECKING:
    from kata.sandbox import AsyncSandbox, Result, Sandbox, arun, run

__all__ = ["AsyncSandbox", "Result", "Sandbox", "__version__", "arun", "run"]

__version__ = "0.1.0"

# The Python API is loaded on first use: `import kata` stays cheap (no asyncio, no protobuf), which the
# guest agent and every kata-runtime verb rely on.
_LAZY = ("AsyncSandbox", "Result", "Sandbox", "arun", "run")

if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """``kata.run``, ``kata.Sandbox``, ...: imported from kata.sandbox on first use."""
        if name not in _LAZY:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib  # not `import kata.sandbox`: the guest image carries kata/__init__.py, not the API

        value = getattr(importlib.import_module("kata.sandbox"), name)
        globals()[name] = value
        return value

"""Sandboxes and containers: the VM, its agent and containers, as a Python library (sync and async)."""

from __future__ import annotations

from typing import TYPE_CHECKING

# Names load their modules on first use: `kata-runtime timeline` needs only the timeline module, and
# importing kata.sandbox must not cost asyncio, protobuf and the hypervisor layer up front.
if TYPE_CHECKING:
    from kata.sandbox.container import AsyncContainer
    from kata.sandbox.errors import SandboxError, SandboxLostError, SandboxNotFoundError
    from kata.sandbox.guestspec import GuestContainer, HostShare, guest_container
    from kata.sandbox.paths import DEFAULT_ROOT, GUEST_ROOT, GuestLayout, SandboxPaths
    from kata.sandbox.process import AsyncExec
    from kata.sandbox.records import ContainerRecord, SandboxRecord
    from kata.sandbox.run import Result, arun, run
    from kata.sandbox.sandbox import AsyncSandbox
    from kata.sandbox.states import ContainerState, SandboxState
    from kata.sandbox.stats import ContainerStats
    from kata.sandbox.stdio import PIPE, OutputBuffer
    from kata.sandbox.sync import Container, Exec, Sandbox
    from kata.sandbox.timeline import PHASES, Timeline, format_timeline, load_timeline

_LAZY = {
    "AsyncContainer": "container",
    "AsyncExec": "process",
    "AsyncSandbox": "sandbox",
    "Container": "sync",
    "ContainerRecord": "records",
    "ContainerState": "states",
    "ContainerStats": "stats",
    "DEFAULT_ROOT": "paths",
    "Exec": "sync",
    "GUEST_ROOT": "paths",
    "GuestContainer": "guestspec",
    "GuestLayout": "paths",
    "HostShare": "guestspec",
    "OutputBuffer": "stdio",
    "PHASES": "timeline",
    "PIPE": "stdio",
    "Result": "run",
    "Sandbox": "sync",
    "SandboxError": "errors",
    "SandboxLostError": "errors",
    "SandboxNotFoundError": "errors",
    "SandboxPaths": "paths",
    "SandboxRecord": "records",
    "SandboxState": "states",
    "Timeline": "timeline",
    "arun": "run",
    "format_timeline": "timeline",
    "guest_container": "guestspec",
    "load_timeline": "timeline",
    "run": "run",
}

if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """Import the module of a lazily exported name on first use."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(f"kata.sandbox.{module}"), name)
        globals()[name] = value
        return value

__all__ = [
    "DEFAULT_ROOT",
    "GUEST_ROOT",
    "PHASES",
    "PIPE",
    "AsyncContainer",
    "AsyncExec",
    "AsyncSandbox",
    "Container",
    "ContainerRecord",
    "ContainerState",
    "ContainerStats",
    "Exec",
    "GuestContainer",
    "GuestLayout",
    "HostShare",
    "OutputBuffer",
    "Result",
    "Sandbox",
    "SandboxError",
    "SandboxLostError",
    "SandboxNotFoundError",
    "SandboxPaths",
    "SandboxRecord",
    "SandboxState",
    "Timeline",
    "arun",
    "format_timeline",
    "guest_container",
    "load_timeline",
    "run",
]

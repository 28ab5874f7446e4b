"""Errors of the sandbox layer, derived from the KataError tree of kata.errors."""

from __future__ import annotations

from kata.errors import KataError

__all__ = ["SandboxError", "SandboxLostError", "SandboxNotFoundError"]


class SandboxError(KataError):
    """A sandbox or container operation failed on the host side (state dir, mounts, stdio, ids).

    Tree (below :class:`kata.errors.KataError`)::

        SandboxError
         ├── SandboxNotFoundError   no state for that sandbox or container id
         └── SandboxLostError       the VM or the agent connection went away under a call
    """

    def __init__(self, message: str, *, sandbox_id: str = "") -> None:
        super().__init__(message)
        self.sandbox_id = sandbox_id


class SandboxNotFoundError(SandboxError):
    """No sandbox (or container) with that id exists under the state root."""


class SandboxLostError(SandboxError):
    """The sandbox's VM exited or its agent connection broke; the call waiting on it failed."""

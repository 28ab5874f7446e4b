"""Errors of the in-guest container runtime, each a KataError the RPC layer maps to a gRPC code.

::

    KataError
     ├── ContainerNotFoundError   no container with that id           (NOT_FOUND)
     ├── ProcessNotFoundError     no process with that exec id         (NOT_FOUND)
     ├── ContainerExistsError     create with an id already in use     (ALREADY_EXISTS)
     ├── ProcessExistsError       exec with an exec id already in use  (ALREADY_EXISTS)
     ├── SetupError               a forked child could not set the container or process up
     │    └── ExecError           execve failed; ``exit_code`` 127 (not found) or 126
     ├── CgroupError              a cgroup file could not be read or written
     ├── TerminalError            a terminal operation on a process without a terminal
     ├── RemoveTimeoutError       processes outlived remove_container's timeout (DEADLINE_EXCEEDED)
     ├── RuntimeClosedError       the runtime was closed while a caller waited
     ├── OciError                 (kata.errors) malformed spec, naming the field
     │    ├── PathEscapeError     a path that leaves the container's rootfs
     │    └── UnsupportedError    a spec feature the guest runtime does not implement
     └── StateError               (kata.errors) a verb not allowed in the current state
"""

from __future__ import annotations

from kata.errors import KataError, OciError

__all__ = [
    "CgroupError",
    "ContainerExistsError",
    "ContainerNotFoundError",
    "ExecError",
    "PathEscapeError",
    "ProcessExistsError",
    "ProcessNotFoundError",
    "RemoveTimeoutError",
    "RuntimeClosedError",
    "SetupError",
    "TerminalError",
    "UnsupportedError",
]


class ContainerNotFoundError(KataError):
    """No container has that id."""

    def __init__(self, container_id: str) -> None:
        super().__init__(f"container {container_id}: not found")
        self.container_id = container_id


class ProcessNotFoundError(KataError):
    """The container has no process with that exec id."""

    def __init__(self, container_id: str, exec_id: str) -> None:
        super().__init__(f"container {container_id}: process {exec_id!r}: not found")
        self.container_id = container_id
        self.exec_id = exec_id


class ContainerExistsError(KataError):
    """A container with that id exists already."""

    def __init__(self, container_id: str) -> None:
        super().__init__(f"container {container_id}: already exists")
        self.container_id = container_id


class ProcessExistsError(KataError):
    """The container already has a process with that exec id."""

    def __init__(self, container_id: str, exec_id: str) -> None:
        super().__init__(f"container {container_id}: process {exec_id!r}: already exists")
        self.container_id = container_id
        self.exec_id = exec_id


class SetupError(KataError):
    """A forked child could not set the container or process up; the message is the child's."""


class ExecError(SetupError):
    """execve of the process failed; ``exit_code`` is what the process exited with (127 or 126)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CgroupError(KataError):
    """A cgroup file could not be read or written, or a controller is missing."""


class TerminalError(KataError):
    """A terminal operation (resize) on a process that has no terminal."""


class RemoveTimeoutError(KataError):
    """The container's processes did not exit within remove_container's timeout."""


class RuntimeClosedError(KataError):
    """The runtime was closed."""


class PathEscapeError(OciError):
    """A path in the spec leaves the container's root filesystem."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class UnsupportedError(OciError):
    """The spec asks for something the guest runtime does not implement."""

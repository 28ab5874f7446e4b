"""Where a sandbox keeps its state on the host, and where the guest sees what is shared with it."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from kata.ids import ID_RULE, valid_id
from kata.sandbox.errors import SandboxError

__all__ = [
    "DEFAULT_ROOT",
    "ENV_ROOT",
    "GUEST_ROOT",
    "VM_LAYOUT",
    "GuestLayout",
    "SandboxPaths",
    "check_id",
    "new_id",
    "resolve_root",
]

DEFAULT_ROOT = "/run/kata"
ENV_ROOT = "KATA_ROOT"
GUEST_ROOT = "/run/kata-containers"  # the agent's directory for storages and shared files


def check_id(kind: str, value: str) -> str:
    """``value`` when it is a usable sandbox or container id (it becomes a directory name).

    Raises:
        SandboxError: it is empty, too long, or has characters other than letters, digits, ``_.-``.
    """
    if not valid_id(value):
        raise SandboxError(f"bad {kind} id {value!r}: {ID_RULE}")
    return value


def new_id() -> str:
    """A fresh random id (64 hex digits, as Docker's)."""
    return uuid.uuid4().hex + uuid.uuid4().hex


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The state root: ``root``, else ``$KATA_ROOT``, else /run/kata."""
    return Path(root if root is not None else os.environ.get(ENV_ROOT) or DEFAULT_ROOT).absolute()


@dataclass(frozen=True)
class SandboxPaths:
    """The files of one sandbox below the state root (``/run/kata/<id>/``)."""

    root: Path
    sandbox_id: str

    @property
    def directory(self) -> Path:
        """The sandbox's state dir; the VM's sockets and console log live here too."""
        return self.root / self.sandbox_id

    @property
    def state_file(self) -> Path:
        """state.json of the sandbox."""
        return self.directory / "state.json"

    @property
    def timeline_file(self) -> Path:
        """timeline.json: the startup phases."""
        return self.directory / "timeline.json"

    @property
    def shared(self) -> Path:
        """The directory the guest sees (virtio-fs/9p tag kataShared)."""
        return self.directory / "shared"

    @property
    def containers(self) -> Path:
        """Parent of the containers' state dirs."""
        return self.directory / "containers"

    def container_dir(self, container_id: str) -> Path:
        """A container's state dir."""
        return self.containers / container_id

    def container_state(self, container_id: str) -> Path:
        """A container's state.json."""
        return self.container_dir(container_id) / "state.json"

    def container_share(self, container_id: str) -> Path:
        """What the container shares with the guest: ``rootfs`` and ``mounts/...`` below it."""
        return self.shared / container_id


@dataclass(frozen=True)
class GuestLayout:
    """Where the agent mounts things: ``root`` is /run/kata-containers in a VM.

    ``host_mode`` is the test seam of the host-mode agent (``python -m kata.guest.hostmode``): it runs
    on this host with ``root`` standing in for /run/kata-containers, and is given the shared dir by a
    bind mount instead of virtio-fs/9p.
    """

    root: str = GUEST_ROOT
    host_mode: bool = False

    @property
    def shared(self) -> str:
        """Where the guest mounts the sandbox's shared dir."""
        return f"{self.root}/shared/containers"

    def container(self, container_id: str) -> str:
        """The guest path of :meth:`SandboxPaths.container_share`."""
        return f"{self.shared}/{container_id}"


VM_LAYOUT = GuestLayout()
"""The layout of a real guest: the agent's files below /run/kata-containers."""

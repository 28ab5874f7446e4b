"""Errors of the OCI CLI, worded as runc's so that engines and people recognise them."""

from __future__ import annotations

from kata.errors import KataError

__all__ = ["ContainerNotFoundError", "OciCliError"]


class OciCliError(KataError):
    """A verb cannot do what was asked (wrong state, bad flags, a daemon that does not answer)."""


class ContainerNotFoundError(OciCliError):
    """No container of that id under ``--root`` (runc: "container does not exist")."""

    def __init__(self, container_id: str) -> None:
        super().__init__(f"container {container_id} does not exist")
        self.container_id = container_id

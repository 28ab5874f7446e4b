"""Sandbox and container lifecycles: state enums, transition tables and guarded verbs."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Generic, TypeVar

from kata.errors import StateError

__all__ = [
    "CONTAINER_TRANSITIONS",
    "CONTAINER_VERBS",
    "SANDBOX_TRANSITIONS",
    "SANDBOX_VERBS",
    "ContainerState",
    "Lifecycle",
    "SandboxState",
]


class SandboxState(enum.Enum):
    """Where a sandbox is in its life."""

    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    LOST = "lost"  # the VM exited or the agent connection broke: only delete is left
    DETACHED = "detached"  # handed to another process: this object may no longer act
    STOPPED = "stopped"  # terminal: VM stopped, mounts and state dir removed


class ContainerState(enum.Enum):
    """Where a container is in its life (the OCI states, plus creating and deleted)."""

    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    DELETED = "deleted"


S = TypeVar("S", bound=enum.Enum)
_SB = SandboxState
_C = ContainerState

SANDBOX_TRANSITIONS: Mapping[SandboxState, frozenset[SandboxState]] = {
    _SB.CREATING: frozenset({_SB.RUNNING, _SB.STOPPED}),
    _SB.RUNNING: frozenset({_SB.PAUSED, _SB.LOST, _SB.DETACHED, _SB.STOPPED}),
    _SB.PAUSED: frozenset({_SB.RUNNING, _SB.LOST, _SB.DETACHED, _SB.STOPPED}),
    _SB.LOST: frozenset({_SB.STOPPED}),
    _SB.DETACHED: frozenset(),
    _SB.STOPPED: frozenset(),
}

# verb -> the states it may be called in (youki's can_start()/can_pause(), as a table).
SANDBOX_VERBS: Mapping[str, frozenset[SandboxState]] = {
    "create container": frozenset({_SB.RUNNING}),
    "call the agent": frozenset({_SB.RUNNING}),
    "pause": frozenset({_SB.RUNNING}),
    "hotplug": frozenset({_SB.RUNNING}),
    "resume": frozenset({_SB.PAUSED}),
    "detach": frozenset({_SB.RUNNING, _SB.PAUSED}),
    "delete": frozenset({_SB.CREATING, _SB.RUNNING, _SB.PAUSED, _SB.LOST}),
}

CONTAINER_TRANSITIONS: Mapping[ContainerState, frozenset[ContainerState]] = {
    _C.CREATING: frozenset({_C.CREATED, _C.DELETED}),
    _C.CREATED: frozenset({_C.RUNNING, _C.STOPPED, _C.DELETED}),
    _C.RUNNING: frozenset({_C.PAUSED, _C.STOPPED, _C.DELETED}),
    _C.PAUSED: frozenset({_C.RUNNING, _C.STOPPED, _C.DELETED}),
    _C.STOPPED: frozenset({_C.DELETED}),
    _C.DELETED: frozenset(),
}

CONTAINER_VERBS: Mapping[str, frozenset[ContainerState]] = {
    "start": frozenset({_C.CREATED}),
    "kill": frozenset({_C.CREATED, _C.RUNNING, _C.PAUSED}),
    "wait": frozenset({_C.CREATED, _C.RUNNING, _C.PAUSED, _C.STOPPED}),
    "exec": frozenset({_C.RUNNING}),
    "pause": frozenset({_C.RUNNING}),
    "resume": frozenset({_C.PAUSED}),
    "stats": frozenset({_C.CREATED, _C.RUNNING, _C.PAUSED}),
    "update": frozenset({_C.CREATED, _C.RUNNING}),  # as Kata: not while paused
    "resize": frozenset({_C.CREATED, _C.RUNNING}),
    "close stdin": frozenset({_C.CREATED, _C.RUNNING, _C.PAUSED}),
    "delete": frozenset({_C.CREATED, _C.STOPPED}),
    "force delete": frozenset({_C.CREATING, _C.CREATED, _C.RUNNING, _C.PAUSED, _C.STOPPED}),
}


class Lifecycle(Generic[S]):
    """The state of one sandbox or container; ``require`` guards a verb, ``move`` a transition."""

    def __init__(self, what: str, state: S, verbs: Mapping[str, frozenset[S]],
                 transitions: Mapping[S, frozenset[S]]) -> None:
        self.what = what
        self.state = state
        self._verbs = verbs
        self._transitions = transitions

    def allows(self, verb: str) -> bool:
        """Whether ``verb`` may be called now."""
        return self.state in self._verbs[verb]

    def require(self, verb: str) -> None:
        """Check that ``verb`` is allowed now.

        Raises:
            StateError: it is not; the error names the state and the states that allow it.
        """
        if self.state not in (allowed := self._verbs[verb]):
            names = tuple(sorted(s.value for s in allowed))
            raise StateError(f"{self.what}: cannot {verb} while {self.state.value} "
                             f"(allowed when {' or '.join(names)})", state=self.state.value, required=names)

    def move(self, state: S) -> None:
        """Enter ``state`` (a no-op when already there).

        Raises:
            StateError: the transition table does not allow it.
        """
        if state is self.state:
            return
        if state not in self._transitions[self.state]:
            raise StateError(f"{self.what}: no transition from {self.state.value} to {state.value}",
                             state=self.state.value, required=tuple(
                                 sorted(s.value for s, targets in self._transitions.items() if state in targets)))
        self.state = state

"""Container and process states, their transition tables and the guards every verb checks first."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from kata.errors import StateError

__all__ = [
    "CONTAINER_TRANSITIONS",
    "PROCESS_TRANSITIONS",
    "ContainerState",
    "ProcessState",
    "advance",
    "require",
]


class ContainerState(Enum):
    """Lifecycle of a container (the OCI states, with paused)."""

    CREATED = "created"  # init is set up and blocked before execve
    RUNNING = "running"
    PAUSED = "paused"  # cgroup frozen
    STOPPED = "stopped"  # init exited


class ProcessState(Enum):
    """Lifecycle of one process of a container (init or exec)."""

    CREATED = "created"  # only init: forked, waiting for start
    RUNNING = "running"
    EXITED = "exited"


S = TypeVar("S", ContainerState, ProcessState)

CONTAINER_TRANSITIONS: dict[ContainerState, frozenset[ContainerState]] = {
    ContainerState.CREATED: frozenset({ContainerState.RUNNING, ContainerState.STOPPED}),
    ContainerState.RUNNING: frozenset({ContainerState.PAUSED, ContainerState.STOPPED}),
    ContainerState.PAUSED: frozenset({ContainerState.RUNNING, ContainerState.STOPPED}),
    ContainerState.STOPPED: frozenset(),
}
PROCESS_TRANSITIONS: dict[ProcessState, frozenset[ProcessState]] = {
    ProcessState.CREATED: frozenset({ProcessState.RUNNING, ProcessState.EXITED}),
    ProcessState.RUNNING: frozenset({ProcessState.EXITED}),
    ProcessState.EXITED: frozenset(),
}


def require(what: str, state: S, *allowed: S) -> None:
    """Fail unless ``state`` is one of ``allowed``; ``what`` names the verb and its object.

    Raises:
        StateError: naming the verb, the state and the states it requires.
    """
    if state not in allowed:
        names = tuple(s.value for s in allowed)
        raise StateError(f"{what}: state is {state.value}, requires {' or '.join(names)}",
                         state=state.value, required=names)


def advance(what: str, state: S, target: S) -> S:
    """``target`` when the transition table allows ``state`` -> ``target``.

    Raises:
        StateError: when it does not (a bug in the caller's guard).
    """
    table: dict[S, frozenset[S]] = (
        CONTAINER_TRANSITIONS if isinstance(state, ContainerState) else PROCESS_TRANSITIONS
    )
    if target not in table[state]:
        raise StateError(f"{what}: cannot go from {state.value} to {target.value}", state=state.value,
                         required=tuple(s.value for s in table if target in table[s]))
    return target

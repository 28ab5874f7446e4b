"""The VM lifecycle every driver shares: states, the verbs each state allows, guarded transitions."""

from __future__ import annotations

import enum

from kata.errors import StateError

__all__ = ["ALLOWED", "Lifecycle", "VmState"]


class VmState(enum.Enum):
    """Where a VM is in its life."""

    NEW = "new"
    PREPARED = "prepared"
    RUNNING = "running"
    PAUSED = "paused"
    EXITED = "exited"  # the VMM process ended on its own; stop() still releases its resources
    STOPPED = "stopped"  # terminal: everything released
    DETACHED = "detached"  # terminal: handed over, still running, owned by another process now


_LIVE = (VmState.RUNNING, VmState.PAUSED)

# verb -> states it may be called in (the guard, as youki's can_start()/can_pause()).
ALLOWED: dict[str, tuple[VmState, ...]] = {
    "prepare": (VmState.NEW,),
    "start": (VmState.PREPARED,),
    "cold_plug": (VmState.PREPARED,),
    "hotplug": (VmState.RUNNING,),
    "pause": (VmState.RUNNING,),
    "resume": (VmState.PAUSED,),
    "resize": (VmState.RUNNING,),
    "check": (*_LIVE, VmState.EXITED),
    "wait": (*_LIVE, VmState.EXITED, VmState.STOPPED),
    "detach": _LIVE,
}


class Lifecycle:
    """The state of one VM; ``require`` guards a verb, ``move`` records a transition."""

    def __init__(self, what: str = "vm") -> None:
        self._what = what
        self.state = VmState.NEW

    def require(self, verb: str) -> None:
        """Check that ``verb`` is allowed now.

        Raises:
            StateError: when it is not (carries the current state and the allowed ones).
        """
        allowed = ALLOWED[verb]
        if self.state not in allowed:
            names = tuple(s.value for s in allowed)
            raise StateError(f"{self._what}: cannot {verb.replace('_', ' ')} a {self.state.value} vm "
                             f"(allowed in: {', '.join(names)})", state=self.state.value, required=names)

    def move(self, state: VmState) -> None:
        """Enter ``state`` (callers guard with :meth:`require` first)."""
        self.state = state

    @property
    def live(self) -> bool:
        """Whether the VM runs or is paused."""
        return self.state in _LIVE

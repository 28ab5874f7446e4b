"""The sandbox and container state machines: tables, guards naming state and required states."""

from __future__ import annotations

import pytest

from kata.errors import StateError
from kata.sandbox.states import (
    CONTAINER_TRANSITIONS,
    CONTAINER_VERBS,
    SANDBOX_TRANSITIONS,
    SANDBOX_VERBS,
    ContainerState,
    Lifecycle,
    SandboxState,
)


def container(state: ContainerState) -> Lifecycle[ContainerState]:
    return Lifecycle("container c1", state, CONTAINER_VERBS, CONTAINER_TRANSITIONS)


def sandbox(state: SandboxState) -> Lifecycle[SandboxState]:
    return Lifecycle("sandbox s1", state, SANDBOX_VERBS, SANDBOX_TRANSITIONS)


def test_tables_cover_every_state() -> None:
    assert set(SANDBOX_TRANSITIONS) == set(SandboxState)
    assert set(CONTAINER_TRANSITIONS) == set(ContainerState)
    assert SANDBOX_TRANSITIONS[SandboxState.STOPPED] == frozenset()
    assert CONTAINER_TRANSITIONS[ContainerState.DELETED] == frozenset()
    # A verb is only allowed where the state can still move on (or stays): no verb on deleted/stopped.
    assert all(ContainerState.DELETED not in states for states in CONTAINER_VERBS.values())
    assert all(SandboxState.STOPPED not in states for states in SANDBOX_VERBS.values())


@pytest.mark.parametrize(("state", "verb", "allowed"), [
    (ContainerState.CREATED, "start", True),
    (ContainerState.RUNNING, "start", False),
    (ContainerState.RUNNING, "exec", True),
    (ContainerState.CREATED, "exec", False),
    (ContainerState.PAUSED, "kill", True),
    (ContainerState.STOPPED, "kill", False),
    (ContainerState.STOPPED, "wait", True),
    (ContainerState.RUNNING, "delete", False),
    (ContainerState.RUNNING, "force delete", True),
    (ContainerState.DELETED, "force delete", False),
])
def test_container_guards(state: ContainerState, verb: str, allowed: bool) -> None:
    assert container(state).allows(verb) is allowed


def test_a_refused_verb_names_the_state_and_the_required_states() -> None:
    with pytest.raises(StateError) as caught:
        container(ContainerState.STOPPED).require("kill")
    assert str(caught.value) == "container c1: cannot kill while stopped (allowed when created or paused or running)"
    assert (caught.value.state, caught.value.required) == ("stopped", ("created", "paused", "running"))
    with pytest.raises(StateError, match="cannot create container while lost") as lost:
        sandbox(SandboxState.LOST).require("create container")
    assert lost.value.required == ("running",)


def test_transitions_follow_the_table() -> None:
    life = container(ContainerState.CREATED)
    life.move(ContainerState.RUNNING)
    life.move(ContainerState.RUNNING)  # staying put is fine
    life.move(ContainerState.STOPPED)
    with pytest.raises(StateError, match="no transition from stopped to running") as caught:
        life.move(ContainerState.RUNNING)
    assert caught.value.state == "stopped"
    assert set(caught.value.required) == {"created", "paused"}
    walk = sandbox(SandboxState.CREATING)
    for state in (SandboxState.RUNNING, SandboxState.PAUSED, SandboxState.LOST, SandboxState.STOPPED):
        walk.move(state)
    with pytest.raises(StateError):
        sandbox(SandboxState.DETACHED).move(SandboxState.STOPPED)

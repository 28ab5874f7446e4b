"""What state.json holds for a sandbox, its VM and its containers: frozen records and their JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kata.network.wiring import NetworkRecord
from kata.sandbox.errors import SandboxError
from kata.sandbox.states import ContainerState, SandboxState

__all__ = ["STATE_VERSION", "ContainerRecord", "ProcessRef", "SandboxRecord", "VmRecord"]

STATE_VERSION = 1


@dataclass(frozen=True)
class ProcessRef:
    """A host process by pid and start time (clock ticks after boot), so a reused pid is not mistaken."""

    pid: int
    start_time: int


@dataclass(frozen=True)
class VmRecord:
    """How another process finds and stops the VM: VMM and helper processes, sockets."""

    hypervisor: str
    processes: tuple[ProcessRef, ...]
    agent_url: str
    qmp_socket: str = ""
    console_log: str = ""
    source: str = "direct"  # where the VM came from: direct (cold boot) or template (a clone)

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object."""
        return {"hypervisor": self.hypervisor, "agent_url": self.agent_url, "qmp_socket": self.qmp_socket,
                "console_log": self.console_log, "source": self.source,
                "processes": [{"pid": p.pid, "start_time": p.start_time} for p in self.processes]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VmRecord:
        """The record of a JSON object (see :meth:`to_json`).

        Raises:
            KeyError, TypeError, ValueError: a field is missing or of the wrong type.
        """
        processes = tuple(ProcessRef(int(p["pid"]), int(p["start_time"])) for p in data["processes"])
        return cls(hypervisor=str(data["hypervisor"]), processes=processes, agent_url=str(data["agent_url"]),
                   qmp_socket=str(data.get("qmp_socket", "")), console_log=str(data.get("console_log", "")),
                   source=str(data.get("source", "direct")))


@dataclass(frozen=True)
class SandboxRecord:
    """state.json of a sandbox."""

    sandbox_id: str
    state: str
    created: float
    vm: VmRecord
    shared_fs: str
    guest_root: str
    host_mode: bool = False
    hostname: str = ""
    dial_timeout: float = 30.0
    guest_seccomp: bool = False
    network: NetworkRecord | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object."""
        return {"version": STATE_VERSION, "id": self.sandbox_id, "state": self.state, "created": self.created,
                "vm": self.vm.to_json(), "shared_fs": self.shared_fs, "guest_root": self.guest_root,
                "host_mode": self.host_mode, "hostname": self.hostname, "dial_timeout": self.dial_timeout,
                "guest_seccomp": self.guest_seccomp,
                "network": self.network.to_json() if self.network is not None else None}

    @classmethod
    def from_json(cls, data: Any, source: str = "state.json") -> SandboxRecord:
        """The record of a parsed state.json.

        Raises:
            SandboxError: a field is missing or wrong, or the version is unknown.
        """
        try:
            _check_version(data, source)
            return cls(sandbox_id=str(data["id"]), state=SandboxState(data["state"]).value,
                       created=float(data["created"]),
                       vm=VmRecord.from_json(data["vm"]), shared_fs=str(data["shared_fs"]),
                       guest_root=str(data["guest_root"]), host_mode=bool(data.get("host_mode", False)),
                       hostname=str(data.get("hostname", "")),
                       dial_timeout=float(data.get("dial_timeout", 30.0)),
                       guest_seccomp=bool(data.get("guest_seccomp", False)),
                       network=NetworkRecord.from_json(data["network"]) if data.get("network") else None)
        except (KeyError, TypeError, ValueError) as exc:
            raise SandboxError(f"{source}: malformed sandbox state ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class ContainerRecord:
    """state.json of a container: its bundle, state and the host mounts it shares with the guest."""

    container_id: str
    sandbox_id: str
    bundle: str
    rootfs: str
    state: str
    created: float
    terminal: bool = False
    shares: tuple[str, ...] = ()
    exit_status: int | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object."""
        return {"version": STATE_VERSION, "id": self.container_id, "sandbox_id": self.sandbox_id,
                "bundle": self.bundle, "rootfs": self.rootfs, "state": self.state, "created": self.created,
                "terminal": self.terminal, "shares": list(self.shares), "exit_status": self.exit_status,
                "annotations": dict(self.annotations)}

    @classmethod
    def from_json(cls, data: Any, source: str = "state.json") -> ContainerRecord:
        """The record of a parsed container state.json.

        Raises:
            SandboxError: a field is missing or wrong, or the version is unknown.
        """
        try:
            _check_version(data, source)
            status = data.get("exit_status")
            return cls(container_id=str(data["id"]), sandbox_id=str(data["sandbox_id"]),
                       bundle=str(data["bundle"]), rootfs=str(data["rootfs"]),
                       state=ContainerState(data["state"]).value,
                       created=float(data["created"]), terminal=bool(data.get("terminal", False)),
                       shares=tuple(str(s) for s in data.get("shares", ())),
                       exit_status=None if status is None else int(status),
                       annotations={str(k): str(v) for k, v in data.get("annotations", {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SandboxError(f"{source}: malformed container state ({type(exc).__name__}: {exc})") from exc


def _check_version(data: Any, source: str) -> None:
    if not isinstance(data, Mapping):
        raise TypeError("not a JSON object")
    if data.get("version") != STATE_VERSION:
        raise SandboxError(f"{source}: state version {data.get('version')!r}, expected {STATE_VERSION}")

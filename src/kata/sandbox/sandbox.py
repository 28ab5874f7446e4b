"""AsyncSandbox: one VM with its agent, shared dir, containers, state files and startup timeline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from kata.agent import AgentClient
from kata.agent.types import Interface, Route
from kata.config import Config, LoadedConfig
from kata.errors import AgentError, HostError, KataError, NetworkError, StateError
from kata.factory import vm_source
from kata.hypervisor import SHARED_FS_TAG, Hypervisor
from kata.hypervisor.devices import NetDevice
from kata.log import fields
from kata.network import WiredNetwork, configure_guest, unwire, unwire_endpoint, wire_endpoint
from kata.oci import Bundle
from kata.sandbox.container import AsyncContainer
from kata.sandbox.errors import SandboxError, SandboxLostError, SandboxNotFoundError
from kata.sandbox.mounts import remove_tree
from kata.sandbox.oom import OomCallback, OomWatcher
from kata.sandbox.paths import VM_LAYOUT, GuestLayout, SandboxPaths, check_id, new_id, resolve_root
from kata.sandbox.persist import read_json, write_json
from kata.sandbox.records import ContainerRecord, SandboxRecord
from kata.sandbox.requests import shared_storage
from kata.sandbox.startup import (
    SandboxOptions,
    connect_agent,
    create_in_guest,
    guest_network,
    make_state_dir,
    resolve_config,
    start_vm,
    wire_network,
)
from kata.sandbox.states import SANDBOX_TRANSITIONS, SANDBOX_VERBS, Lifecycle, SandboxState
from kata.sandbox.stdio import StdinTarget, StdoutTarget
from kata.sandbox.timeline import (
    AGENT_REACHABLE,
    CONFIG_LOADED,
    SANDBOX_CREATED,
    VM_SPAWNED,
    Timeline,
    append_phase,
    load_timeline,
)
from kata.sandbox.vmm import AdoptedVm, OwnedVm, VmControl
from kata.ttrpc.status import ConnectionClosedError, InvalidArgumentError

__all__ = ["AsyncSandbox", "SandboxStarter"]

_log = logging.getLogger("kata.sandbox")
T = TypeVar("T")
_S = SandboxState
DESTROY_TIMEOUT = 5.0  # DestroySandbox is a courtesy before the VM is stopped anyway
LOAD_DIAL_TIMEOUT = 10.0
STALE_SESSION_PAUSE = 0.5


class AsyncSandbox:
    """A sandbox: a VM, its agent connection and its containers. Lifecycle (guarded, see states.py)::

        creating -> running <--pause/resume--> paused
        running/paused --(VM exits, agent connection breaks)--> lost
        running/paused --detach--> detached        (another process may load it)
        any --delete--> stopped                    (VM stopped, mounts and state dir removed)

    Make one with :meth:`create` (``async with AsyncSandbox.create(config) as sb:`` deletes it at the
    end) or :meth:`load` (another process's sandbox, from its state.json).
    """

    def __init__(self, record: SandboxRecord, paths: SandboxPaths, vm: VmControl, agent: AgentClient | None,
                 state: SandboxState) -> None:
        self.record = record
        self.paths = paths
        self.layout = GuestLayout(record.guest_root, record.host_mode)
        self.keep_seccomp = record.guest_seccomp
        self.containers: dict[str, AsyncContainer] = {}
        self._vm = vm
        self._agent = agent
        self._life: Lifecycle[SandboxState] = Lifecycle(f"sandbox {record.sandbox_id[:12]}", state,
                                                        SANDBOX_VERBS, SANDBOX_TRANSITIONS)
        self._oom = OomWatcher(agent, record.sandbox_id)
        self._closing = False
        self._lock = asyncio.Lock()
        self._ksm: asyncio.Task[None] | None = None

    @property
    def sandbox_id(self) -> str:
        """The sandbox id."""
        return self.record.sandbox_id

    @property
    def state(self) -> SandboxState:
        """The lifecycle state."""
        return self._life.state

    @property
    def pids(self) -> tuple[int, ...]:
        """Host pids of the VMM and its helpers (as recorded at create)."""
        return tuple(p.pid for p in self._vm.record.processes)

    def _fields(self, **extra: object) -> dict[str, dict[str, object]]:
        return fields(sandbox=self.sandbox_id, **extra)

    # creation and loading

    @classmethod
    def create(cls, config: Config | LoadedConfig | None = None, *, sandbox_id: str | None = None,
               root: str | os.PathLike[str] | None = None, hostname: str = "", dns: Sequence[str] = (),
               guest: GuestLayout = VM_LAYOUT, start_timeout: float = 30.0,
               netns: str | None = None) -> SandboxStarter:
        """Start a sandbox: state dir, network, VM with the shared dir, agent, CreateSandbox.

        ``netns`` is the path of the network namespace whose interfaces the VM gets (tc mirred redirect
        to a tap; the guest gets the same addresses, routes and static neighbours); ``""`` makes a new,
        empty one (unless ``[runtime] disable_new_netns``), None gives the guest loopback only.

        Await it (``sb = await AsyncSandbox.create(...)``) or use it as ``async with``. A failed create
        leaves no process, mount or state dir.

        Raises:
            ConfigError: the configuration (or hypervisor name) is invalid.
            SandboxError: bad or existing id, no shared fs configured, or a host mount failed.
            NetworkError: the network namespace cannot be read or wired.
            HypervisorError: the VM did not start (e.g. a missing kernel).
            AgentError, RpcError: the agent did not answer within ``[agent.kata] dial_timeout`` or refused.
        """
        options = SandboxOptions(hostname=hostname, dns=tuple(dns), guest=guest, start_timeout=start_timeout,
                                 netns=netns)
        return SandboxStarter(cls._create(config, sandbox_id, root, options))

    @classmethod
    async def _create(cls, config_source: Config | LoadedConfig | None, sandbox_id: str | None,
                      root: str | os.PathLike[str] | None, options: SandboxOptions) -> AsyncSandbox:
        timeline = Timeline.begin()
        config = resolve_config(config_source)
        timeline = timeline.mark(CONFIG_LOADED)
        paths = SandboxPaths(resolve_root(root), check_id("sandbox", sandbox_id or new_id()))
        shared_fs = "bind" if options.guest.host_mode else config.hypervisor.shared_fs
        shared_storage(shared_fs, options.guest, str(paths.shared), SHARED_FS_TAG)  # fail before booting
        try:
            async with AsyncExitStack() as stack:
                source = vm_source(config, host_mode=options.guest.host_mode)
                await make_state_dir(stack, paths, source)
                network = await wire_network(stack, config, paths, options)
                hypervisor = await start_vm(stack, source, config, paths, options,
                                            nics=network.devices if network else ())
                if network is not None:
                    network.close_fds()  # QEMU holds the taps now
                timeline = timeline.mark(VM_SPAWNED)
                vm = OwnedVm(hypervisor, source=source.name)
                record = SandboxRecord(sandbox_id=paths.sandbox_id, state=_S.CREATING.value, created=time.time(),
                                       vm=vm.record, shared_fs=shared_fs, guest_root=options.guest.root,
                                       host_mode=options.guest.host_mode, hostname=options.hostname,
                                       dial_timeout=float(config.agent.dial_timeout),
                                       guest_seccomp=not config.runtime.disable_guest_seccomp,
                                       network=network.record if network else None)
                write_json(paths.state_file, record.to_json())  # another process can clean up from here on
                agent = await connect_agent(stack, vm.record.agent_url, float(config.agent.dial_timeout))
                timeline = timeline.mark(AGENT_REACHABLE)
                await source.prime(agent)
                await create_in_guest(agent, config, paths, options, options.dns, share_wait=source.share_wait)
                if network is not None:
                    await configure_guest(agent, guest_network(source, network))
                timeline = timeline.mark(SANDBOX_CREATED)
                sandbox = cls(record, paths, vm, agent, _S.CREATING)
                sandbox._start(timeline)
                stack.pop_all()
            if config.factory.enable_ksm:
                sandbox._ksm = asyncio.get_running_loop().create_task(_throttle_ksm(paths.sandbox_id), name="ksm")
        except KataError as exc:
            exc.add_note(f"while creating sandbox {paths.sandbox_id}")
            _log.warning("sandbox create failed: %s", exc, extra=fields(sandbox=paths.sandbox_id))
            raise
        _log.info("sandbox created", extra=sandbox._fields(seconds=round(timeline.elapsed(SANDBOX_CREATED) or 0, 3)))
        return sandbox

    def _start(self, timeline: Timeline) -> None:
        write_json(self.paths.timeline_file, replace(timeline, sandbox_id=self.sandbox_id).to_json())
        self._life.move(_S.RUNNING)
        self._persist()
        self._vm.on_exit(self._on_vm_exit)

    @classmethod
    async def load(cls, sandbox_id: str, *, root: str | os.PathLike[str] | None = None,
                   dial_timeout: float = LOAD_DIAL_TIMEOUT, connect: bool = True) -> AsyncSandbox:
        """Another process's sandbox from its state.json: reconnect to its agent (the VM kept running).

        A VM that is gone, or an agent that does not answer within ``dial_timeout`` s, gives a ``lost``
        sandbox (it can only be deleted). ``connect=False`` dials nothing (for a quick :meth:`delete`,
        which then cleans up only the host side and stops the VM): the sandbox keeps its recorded
        state, but every verb that needs the agent raises StateError.

        Raises:
            AgentError: ``connect`` with a ``dial_timeout`` that is not positive.
            SandboxNotFoundError: there is no such sandbox under the root.
            SandboxError: its state files are malformed.
        """
        if connect and not dial_timeout > 0:
            raise AgentError(f"load sandbox {sandbox_id}: dial_timeout must be positive, not {dial_timeout:g} "
                             "(connect=False loads without dialing the agent)")
        paths = SandboxPaths(resolve_root(root), check_id("sandbox", sandbox_id))
        try:
            record = SandboxRecord.from_json(read_json(paths.state_file), str(paths.state_file))
        except SandboxNotFoundError as exc:
            raise SandboxNotFoundError(f"sandbox {sandbox_id} does not exist (no {paths.state_file})",
                                       sandbox_id=sandbox_id) from exc
        vm = AdoptedVm(record.sandbox_id, record.vm)
        state, agent = _S(record.state), None
        if connect and state in (_S.RUNNING, _S.PAUSED):
            agent = await _reconnect(vm, record, dial_timeout)
            state = state if agent is not None else _S.LOST
        sandbox = cls(record, paths, vm, agent, state)
        for container_record in _container_records(paths):
            sandbox.containers[container_record.container_id] = AsyncContainer(sandbox, container_record)
        if sandbox.state in (_S.RUNNING, _S.PAUSED):
            vm.on_exit(sandbox._on_vm_exit)
        return sandbox

    # used by containers

    def agent_for(self, verb: str) -> AgentClient:
        """The agent connection, if ``verb`` is allowed in this state.

        Raises:
            StateError: the sandbox is not running (paused, lost, detached, stopped).
        """
        self._life.require(verb)
        if self._agent is None or self._closing:
            raise StateError(f"sandbox {self.sandbox_id[:12]}: no agent connection", state=self.state.value,
                             required=(_S.RUNNING.value,))
        return self._agent

    def agent_available(self) -> bool:
        """Whether agent calls can be made now."""
        return self._agent is not None and self._life.allows("call the agent")

    async def call(self, awaitable: Awaitable[T]) -> T:
        """Await an agent call; a broken connection marks the sandbox lost.

        Raises:
            SandboxLostError: the connection broke (the VM exited, was killed, or the sandbox is being deleted).
            RpcError: the agent answered with an error.
        """
        try:
            return await awaitable
        except ConnectionClosedError as exc:
            if self._closing or self.state is _S.DETACHED:
                raise SandboxLostError(f"sandbox {self.sandbox_id}: {self.state.value}, the call was cut",
                                       sandbox_id=self.sandbox_id) from exc
            self._lost(f"agent connection lost: {exc}")
            raise SandboxLostError(f"sandbox {self.sandbox_id} lost: {exc}", sandbox_id=self.sandbox_id) from exc

    def forget(self, container_id: str) -> None:
        """Drop a deleted container."""
        self.containers.pop(container_id, None)

    def phase(self, name: str, container_id: str = "") -> None:
        """Record a startup phase in timeline.json (a failure to write it is only logged)."""
        try:
            append_phase(self.paths.timeline_file, name, container_id)
        except SandboxError as exc:
            _log.warning("timeline: %s", exc, extra=self._fields())

    # loss

    def _on_vm_exit(self) -> None:
        self._lost("the VM exited")

    def _lost(self, why: str) -> None:
        if self.state not in (_S.RUNNING, _S.PAUSED) or self._closing:
            return
        _log.warning("sandbox lost: %s", why, extra=self._fields())
        self._life.move(_S.LOST)
        with contextlib.suppress(SandboxError):
            self._persist()
        if self._agent is not None:  # fail every pending call now, whatever the socket does
            asyncio.get_running_loop().create_task(self._agent.close(), name="agent-close")

    def _persist(self) -> None:
        if self.state in (_S.RUNNING, _S.PAUSED, _S.LOST):
            self.record = replace(self.record, state=self.state.value)
            write_json(self.paths.state_file, self.record.to_json())

    # public verbs

    async def create_container(self, bundle: str | os.PathLike[str] | Bundle, *, container_id: str | None = None,
                               stdin: StdinTarget = None, stdout: StdoutTarget = None,
                               stderr: StdoutTarget = None) -> AsyncContainer:
        """A container from an OCI bundle (directory with config.json, or a loaded Bundle); not started.

        Raises:
            StateError: the sandbox is not running.
            OciError: the bundle or its config.json is bad.
            SandboxError: the id is bad or in use, or a host mount failed.
            SandboxLostError, RpcError: the agent refused or went away.
        """
        container = await AsyncContainer.create(self, bundle, container_id=container_id, stdin=stdin,
                                                stdout=stdout, stderr=stderr)
        self.containers[container.id] = container
        return container

    def container(self, container_id: str) -> AsyncContainer:
        """The container with that id.

        Raises:
            SandboxNotFoundError: there is none in this sandbox.
        """
        try:
            return self.containers[container_id]
        except KeyError:
            raise SandboxNotFoundError(f"container {container_id} does not exist in sandbox {self.sandbox_id}",
                                       sandbox_id=self.sandbox_id) from None

    # network interfaces

    def _hypervisor(self, verb: str) -> Hypervisor:
        if not isinstance(self._vm, OwnedVm):
            raise StateError(f"sandbox {self.sandbox_id[:12]}: cannot {verb}: only the process that started the VM "
                             "can hotplug devices", state=self.state.value, required=(_S.RUNNING.value,))
        return self._vm.hypervisor

    async def add_interface(self, name: str) -> Interface:
        """Wire the link ``name`` of the sandbox's network namespace (e.g. a second CNI network's veth) to
        the running VM: tap + tc redirects, NIC hotplugged, then the guest interface gets its addresses and
        the routes and static neighbours through it. What the guest then has is returned.

        Raises:
            StateError: not running, or a sandbox this process loaded rather than started.
            NetworkError: no network namespace, no such link, or it is wired already.
            HypervisorError: the NIC could not be hotplugged (the wiring is undone).
            RpcError: the guest refused the interface or routes (the NIC stays; remove_interface undoes it).
        """
        async with self._lock:
            self._life.require("hotplug")
            hypervisor = self._hypervisor("add an interface")
            network = self.record.network
            if network is None:
                raise NetworkError(f"sandbox {self.sandbox_id[:12]} was created without a network namespace")
            added = await asyncio.to_thread(wire_endpoint, network, name)
            try:
                await hypervisor.add_device(added.device)
            except BaseException:
                await asyncio.to_thread(unwire_endpoint, replace(network, endpoints=(added.record,)), name)
                raise
            finally:
                WiredNetwork(network, (added.device,)).close_fds()
            self.record = replace(self.record, network=replace(network, endpoints=(*network.endpoints, added.record)))
            self._persist()
            agent = self.agent_for("call the agent")
            bus_path = added.device.id  # non-empty: the agent waits for the hotplugged NIC to appear
            interface = await self.call(agent.update_interface(replace(added.interface, device_path=bus_path)))
            await self.call(agent.update_routes(added.routes))
            if added.neighbors:
                await self.call(agent.add_arp_neighbors(added.neighbors))
            _log.info("interface added", extra=self._fields(interface=name, tap=added.record.tap))
            return interface

    async def remove_interface(self, name: str) -> None:
        """Unplug the NIC :meth:`add_interface` gave the VM for ``name`` and undo its wiring.

        Raises:
            StateError: not running, or a sandbox this process loaded rather than started.
            NetworkError: ``name`` was not added by add_interface, or its wiring cannot be undone.
            HypervisorError: the NIC was there from the start (not hotplugged), or the guest kept it.
        """
        async with self._lock:
            self._life.require("hotplug")
            hypervisor = self._hypervisor("remove an interface")
            network = self.record.network
            endpoint = next((e for e in network.endpoints if e.name == name), None) if network else None
            if network is None or endpoint is None:
                raise NetworkError(f"{name} is not an interface of sandbox {self.sandbox_id[:12]}")
            number = endpoint.tap.removeprefix("tap").partition("_")[0]
            # Unplugging goes by device id (a cold-plugged NIC is refused: it stays until the VM stops).
            await hypervisor.remove_device(NetDevice(f"net{number}", "00:00:00:00:00:00", tap_name=endpoint.tap))
            self.record = replace(self.record, network=await asyncio.to_thread(unwire_endpoint, network, name))
            self._persist()
            _log.info("interface removed", extra=self._fields(interface=name))

    async def list_interfaces(self) -> tuple[Interface, ...]:
        """The guest's interfaces as its kernel has them.

        Raises:
            StateError: the sandbox is not running.
        """
        return await self.call(self.agent_for("call the agent").list_interfaces())

    async def list_routes(self) -> tuple[Route, ...]:
        """The guest's main routing table.

        Raises:
            StateError: the sandbox is not running.
        """
        return await self.call(self.agent_for("call the agent").list_routes())

    async def pause(self) -> None:
        """Freeze the whole VM.

        Raises:
            StateError: the sandbox is not running.
            HypervisorError: the VMM refused.
        """
        self._life.require("pause")
        await self._vm.pause()
        self._life.move(_S.PAUSED)
        self._persist()

    async def resume(self) -> None:
        """Unfreeze the VM.

        Raises:
            StateError: the sandbox is not paused.
            HypervisorError: the VMM refused.
        """
        self._life.require("resume")
        await self._vm.resume()
        self._life.move(_S.RUNNING)
        self._persist()

    def on_oom(self, callback: OomCallback) -> Callable[[], None]:
        """Call ``callback(container_id)`` (in the event loop) for every OOM kill; returns unsubscribe."""
        return self._oom.subscribe(callback)

    def timeline(self) -> Timeline:
        """The startup timeline (from timeline.json).

        Raises:
            SandboxError: it cannot be read.
        """
        return load_timeline(self.paths.timeline_file)

    async def delete(self) -> None:
        """Delete every container, DestroySandbox, stop the VM, remove mounts and the state dir.

        Idempotent once stopped.

        Raises:
            StateError: the sandbox was detached (another process owns it now).
            SandboxError: a host mount or the state dir could not be removed.
        """
        async with self._lock:
            if self.state is _S.STOPPED:
                return
            self._life.require("delete")
            await self._oom.stop()
            await self._stop_ksm()
            for container in list(self.containers.values()):
                try:
                    await container.delete(force=True)
                except KataError as exc:
                    _log.warning("delete container %s: %s", container.id, exc, extra=self._fields())
            await self._close_agent(destroy=self.state is _S.RUNNING)
            await self._vm.stop()
            if self.record.network is not None:
                await asyncio.to_thread(unwire, self.record.network)
            remove_tree(self.paths.directory)
            self._life.move(_S.STOPPED)
            _log.info("sandbox deleted", extra=self._fields())

    async def _stop_ksm(self) -> None:
        if self._ksm is not None:
            self._ksm.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ksm
            self._ksm = None

    async def _close_agent(self, *, destroy: bool) -> None:
        self._closing = True
        if self._agent is None:
            return
        if destroy:
            with contextlib.suppress(KataError, TimeoutError):
                async with asyncio.timeout(DESTROY_TIMEOUT):
                    await self._agent.destroy_sandbox()
        await self._agent.close()

    async def detach(self) -> bool:
        """Hand the sandbox over to another process (:meth:`load`): stop relays, close the agent connection.

        Returns whether the VM survives this process's exit (the hypervisor driver must support that;
        otherwise the VM lives only as long as this process).

        Raises:
            StateError: the sandbox is not running or paused.
        """
        async with self._lock:
            self._life.require("detach")
            await self._oom.stop()
            await self._stop_ksm()
            for container in self.containers.values():
                await container.release()
            self._vm.unwatch()
            if self._agent is not None:
                await self._agent.close()
            survives = await self._vm.detach()
            self._persist()
            self._life.move(_S.DETACHED)
        return survives

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self.state is not _S.DETACHED:
            await self.delete()


class SandboxStarter:
    """What :meth:`AsyncSandbox.create` returns: await it, or ``async with`` it (deleted at the end)."""

    def __init__(self, creation: Awaitable[AsyncSandbox]) -> None:
        self._creation = creation
        self._sandbox: AsyncSandbox | None = None

    def __await__(self) -> Generator[Any, None, AsyncSandbox]:
        return self._creation.__await__()

    async def __aenter__(self) -> AsyncSandbox:
        self._sandbox = await self._creation
        return self._sandbox

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._sandbox is not None:
            await self._sandbox.__aexit__(exc_type, exc, tb)


async def _throttle_ksm(sandbox_id: str) -> None:
    """KSM's fast burst after a sandbox started, then its idle rate (a failure is only logged)."""
    from kata.factory.ksm import throttle_ksm

    try:
        await throttle_ksm()
    except HostError as exc:
        _log.warning("%s", exc, extra=fields(sandbox=sandbox_id))


async def _reconnect(vm: AdoptedVm, record: SandboxRecord, timeout: float) -> AgentClient | None:
    if not vm.alive():
        _log.warning("sandbox lost: its VM is gone", extra=fields(sandbox=record.sandbox_id))
        return None
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await _dial(record.vm.agent_url, max(0.1, deadline - time.monotonic()))
        except _StaleSessionError:
            if time.monotonic() < deadline:
                continue
            why = "the agent kept the previous connection's session"
        except KataError as exc:
            why = str(exc)
        _log.warning("sandbox lost: %s", why, extra=fields(sandbox=record.sandbox_id))
        return None


class _StaleSessionError(Exception):
    """The agent did not notice that the previous host connection went away."""


async def _dial(url: str, timeout: float) -> AgentClient:
    agent = await AgentClient.connect(url, timeout=timeout)
    try:
        await agent.wait_ready(timeout)
    except AgentError as exc:
        await agent.close()
        if isinstance(exc.__cause__, InvalidArgumentError):
            # A virtio-serial agent that missed the hangup between the last owner's disconnect and our
            # connect still expects that session's stream ids. Hanging up again lets it see one.
            await asyncio.sleep(STALE_SESSION_PAUSE)
            raise _StaleSessionError from exc
        raise
    return agent


def _container_records(paths: SandboxPaths) -> list[ContainerRecord]:
    records = []
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(Path(paths.containers).iterdir()):
            state = entry / "state.json"
            try:
                records.append(ContainerRecord.from_json(read_json(state), str(state)))
            except SandboxNotFoundError:
                _log.warning("container dir without state: %s", entry, extra=fields(sandbox=paths.sandbox_id))
    return records

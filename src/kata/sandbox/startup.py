"""The steps of creating a sandbox; each registers its undo on the caller's AsyncExitStack when it acquires."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace

from kata.agent import AgentClient
from kata.config import Config, LoadedConfig, load_config
from kata.factory import VmRequest, VmSource
from kata.hypervisor import SHARED_FS_TAG, Hypervisor
from kata.hypervisor.devices import Device, NetDevice
from kata.network import NetworkInfo, WiredNetwork, unwire, wire
from kata.sandbox.errors import SandboxError
from kata.sandbox.mounts import make_shared, remove_tree, unmount
from kata.sandbox.paths import VM_LAYOUT, GuestLayout, SandboxPaths
from kata.sandbox.procs import terminate
from kata.sandbox.records import ProcessRef
from kata.sandbox.requests import sandbox_request, shared_storage
from kata.ttrpc.status import NotFoundError

__all__ = ["SandboxOptions", "connect_agent", "create_in_guest", "guest_network", "make_state_dir", "resolve_config",
           "start_vm", "wire_network"]

CLAIMED_VM_GRACE = 3.0  # SIGTERM to SIGKILL for a claimed VM whose adoption failed


@dataclass(frozen=True)
class SandboxOptions:
    """Per-sandbox facts beyond the configuration."""

    hostname: str = ""
    dns: tuple[str, ...] = ()
    guest: GuestLayout = VM_LAYOUT
    start_timeout: float = 30.0
    netns: str | None = None  # the network namespace to wire to the VM ("" a new one, None none)


def resolve_config(config: Config | LoadedConfig | None) -> Config:
    """The configuration to use: as given, or loaded from the search list.

    Raises:
        ConfigError: the configuration files are invalid.
    """
    if config is None:
        return load_config().config
    return config.config if isinstance(config, LoadedConfig) else config


async def make_state_dir(stack: AsyncExitStack, paths: SandboxPaths, source: VmSource) -> None:
    """Create the state dir and the shared dir (a shared mount), or take both over with a cached VM that
    ``source`` claims (its processes are stopped first on undo); undo: unmount, remove both.

    Raises:
        SandboxError: the sandbox exists already, or a directory or mount cannot be made.
        FactoryError: a cached VM could not be taken over.
    """
    try:
        paths.root.mkdir(parents=True, exist_ok=True, mode=0o711)
    except OSError as exc:
        raise SandboxError(f"create {paths.root}: {exc.strerror}", sandbox_id=paths.sandbox_id) from exc
    if not paths.directory.exists():  # an existing sandbox is refused below, not handed a VM
        processes = await source.claim_workdir(paths.directory, paths.sandbox_id)
        if processes is not None:
            stack.callback(remove_tree, paths.directory)
            stack.callback(unmount, paths.shared)
            refs = tuple(ProcessRef(pid, start) for pid, start in processes)
            stack.push_async_callback(terminate, refs, CLAIMED_VM_GRACE)  # if the VM is never adopted
            return
    try:
        paths.directory.mkdir(mode=0o750)
    except FileExistsError as exc:
        raise SandboxError(f"sandbox {paths.sandbox_id} already exists ({paths.directory})",
                           sandbox_id=paths.sandbox_id) from exc
    except OSError as exc:
        raise SandboxError(f"create {paths.directory}: {exc.strerror}", sandbox_id=paths.sandbox_id) from exc
    stack.callback(remove_tree, paths.directory)
    paths.shared.mkdir(mode=0o750)
    make_shared(paths.shared)
    stack.callback(unmount, paths.shared)


async def wire_network(stack: AsyncExitStack, config: Config, paths: SandboxPaths,
                       options: SandboxOptions) -> WiredNetwork | None:
    """Wire ``options.netns`` to the VM-to-be (``[runtime] internetworking_model``); undo: unwire it.

    Raises:
        NetworkError: the namespace cannot be read or wired (nothing is left then).
    """
    if options.netns is None or options.guest.host_mode:
        return None
    wired = await asyncio.to_thread(wire, options.netns, model=config.runtime.internetworking_model,
                                    sandbox_id=paths.sandbox_id, new_netns=not config.runtime.disable_new_netns)
    stack.callback(unwire, wired.record)
    stack.callback(wired.close_fds)
    return wired


async def start_vm(stack: AsyncExitStack, source: VmSource, config: Config, paths: SandboxPaths,
                   options: SandboxOptions, *, nics: Sequence[Device] = ()) -> Hypervisor:
    """A running VM from ``source`` (cold boot or template clone) with the shared dir and ``nics``;
    undo: stop it.

    Raises:
        AcceleratorError: no accelerator works.
        ConfigError: unknown hypervisor name.
        HypervisorError: the VM could not be prepared or started (the driver leaves nothing behind).
        FactoryError: the VM template could not be made.
    """
    request = VmRequest(config=config, workdir=paths.directory, sandbox_id=paths.sandbox_id,
                        shared_dir=None if options.guest.host_mode else paths.shared, nics=tuple(nics),
                        start_timeout=options.start_timeout)
    return await source.start(stack, request)


def guest_network(source: VmSource, network: WiredNetwork) -> NetworkInfo:
    """The network as the guest is told it: hotplugged NICs are named so that the agent waits for them."""
    ids = {d.mac: d.id for d in network.devices if isinstance(d, NetDevice)}
    endpoints = tuple(replace(e, interface=source.guest_interface(e.interface, ids.get(e.interface.hw_addr, "")))
                      for e in network.info.endpoints)
    return replace(network.info, endpoints=endpoints)


async def connect_agent(stack: AsyncExitStack, url: str, dial_timeout: float) -> AgentClient:
    """Connect to the agent and wait until it answers Health.Check, both within ``dial_timeout`` s; undo: close.

    Raises:
        AgentError: no connection, or no SERVING answer in time.
    """
    deadline = time.monotonic() + dial_timeout
    agent = await AgentClient.connect(url, timeout=dial_timeout)
    stack.push_async_callback(agent.close)
    await agent.wait_ready(max(0.1, deadline - time.monotonic()))
    return agent


async def create_in_guest(agent: AgentClient, config: Config, paths: SandboxPaths, options: SandboxOptions,
                          dns: Sequence[str], *, share_wait: float = 0.0) -> None:
    """CreateSandbox: hostname, DNS, the shared dir's storage and the configured kernel modules.

    ``share_wait``: for up to this long, a NOT_FOUND answer (the share's tag is not there yet: its device
    was just hotplugged) is retried; the guest undoes a failed CreateSandbox completely.

    Raises:
        SandboxError: no shared fs is configured.
        RpcError: the agent refused.
    """
    storage = shared_storage(config.hypervisor.shared_fs, options.guest, str(paths.shared), SHARED_FS_TAG)
    request = sandbox_request(paths.sandbox_id, hostname=options.hostname, dns=dns, storages=(storage,),
                              modules=config.agent.kernel_modules)
    deadline = time.monotonic() + share_wait
    while True:
        try:
            await agent.create_sandbox(request)
            return
        except NotFoundError:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.02)

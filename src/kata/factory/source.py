"""Where a sandbox's VM comes from: a cold boot (``direct``) or a clone of the VM template (``template``)."""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import subprocess
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kata.agent import AgentClient
from kata.agent.types import Interface
from kata.config import Config
from kata.errors import FactoryError, RpcError
from kata.factory.template import Template, key_files, prepared_vm, template_key
from kata.hypervisor import (
    SHARED_FS_TAG,
    Adoptable,
    Hypervisor,
    MemoryImage,
    SharedFs,
    Templatable,
    new_hypervisor,
    shared_fs_for,
)
from kata.hypervisor.accel import choose_accelerator
from kata.hypervisor.devices import Device
from kata.log import fields

if TYPE_CHECKING:
    from kata.factory.cache import CachedVm

__all__ = ["CacheSource", "DirectSource", "TemplateSource", "VmRequest", "VmSource", "copy_sparse", "vm_source"]

_log = logging.getLogger("kata.factory")
RANDOM_SEED_BYTES = 512  # what the host gives each clone's CRNG (clones share the template's state)
# A hotplugged virtio-fs device is probed by the guest a moment after device_add; until then mounting
# its tag fails with ENOENT (NOT_FOUND). This bounds how long CreateSandbox retries.
SHARE_WAIT = 10.0
# How long a sandbox waits for the cache server to hand a VM over (it waits for one being booted).
GET_VM_TIMEOUT = 20.0


@dataclass(frozen=True)
class VmRequest:
    """What a sandbox asks of its VM: where it lives, what it shares, its NICs."""

    config: Config
    workdir: Path  # the sandbox's state dir: the VM's sockets, console log (and RAM copy) go here
    sandbox_id: str
    shared_dir: Path | None  # the directory the guest gets as kataShared (None: no shared-fs device)
    nics: tuple[Device, ...] = ()
    start_timeout: float = 30.0


class VmSource(abc.ABC):
    """Gives a sandbox a started VM; per-sandbox facts are applied after the VM exists."""

    name: str  # what state.json records as the VM's source
    share_wait: float = 0.0  # how long CreateSandbox may wait for the shared fs to appear
    nics_hotplugged: bool = False  # the guest must wait for its NICs (UpdateInterface device_path)

    async def claim_workdir(self, workdir: Path, sandbox_id: str) -> tuple[tuple[int, int], ...] | None:
        """Make ``workdir`` (the sandbox's state dir-to-be, with ``shared/`` a shared bind mount) from a VM
        that lives there already, and return that VM's processes as (pid, start time), VMM first, for
        the caller to register their undo; None when the caller makes the dir (every source but the cache).

        Raises:
            FactoryError: the VM could not be taken over.
        """
        del workdir, sandbox_id
        return None

    @abc.abstractmethod
    async def start(self, stack: AsyncExitStack, request: VmRequest) -> Hypervisor:
        """A running VM with the request's share and NICs; its undo (stop) registered on ``stack``.

        Raises:
            AcceleratorError, ConfigError, HypervisorError: the VM could not be made or started.
            FactoryError: (template) the template could not be made.
        """

    async def prime(self, agent: AgentClient) -> None:
        """Per-VM facts once its agent answers (before CreateSandbox); nothing for a cold boot.

        Raises:
            RpcError: the agent refused.
        """
        del agent

    def guest_interface(self, interface: Interface, device_id: str) -> Interface:
        """``interface`` as UpdateInterface should get it: naming the NIC's device when it was hotplugged."""
        return replace(interface, device_path=device_id) if self.nics_hotplugged else interface


class DirectSource(VmSource):
    """A cold boot: the share and the NICs are on the VMM's command line."""

    name = "direct"

    async def start(self, stack: AsyncExitStack, request: VmRequest) -> Hypervisor:
        """See :meth:`VmSource.start`."""
        config = request.config
        accelerator = (await asyncio.to_thread(choose_accelerator, config.hypervisor)).accelerator
        vm = new_hypervisor(config.hypervisor_name, config.hypervisor, request.workdir,
                            sandbox_id=request.sandbox_id, accelerator=accelerator)
        share = None
        if request.shared_dir is not None:
            share = shared_fs_for(config.hypervisor, vm.paths, str(request.shared_dir))
        await vm.prepare([*([share] if share is not None else []), *request.nics])
        stack.push_async_callback(vm.stop)
        await vm.start(timeout=request.start_timeout)
        return vm


async def copy_sparse(source: Path, target: Path) -> None:
    """Copy ``source`` keeping its holes (a RAM file is mostly holes: the guest touched 80-90 MiB).

    Raises:
        FactoryError: the copy failed.
    """
    done = await asyncio.to_thread(subprocess.run, ["cp", "--sparse=always", str(source), str(target)],
                                   stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise FactoryError(f"copy {source}: {done.stderr.strip() or f'cp exit status {done.returncode}'}")
    os.chmod(target, 0o600)


class TemplateSource(VmSource):
    """A clone of the VM template (made first when missing or stale).

    With 9p (or no share) the clone maps the template's RAM file copy-on-write: the pages it never
    writes are shared with every other clone. virtio-fs needs the RAM shared with virtiofsd, which a
    private mapping is not: such a clone restores onto its own sparse copy of the RAM file (so shares
    nothing) and gets the virtio-fs device hotplugged.
    """

    name = "template"
    nics_hotplugged = True

    def __init__(self, config: Config) -> None:
        self.template = Template(config)
        self.private_memory = config.hypervisor.shared_fs == "virtio-fs"
        self.share_wait = SHARE_WAIT if self.private_memory else 0.0

    async def start(self, stack: AsyncExitStack, request: VmRequest) -> Hypervisor:
        """See :meth:`VmSource.start`: restore a clone, then hotplug virtio-fs and the NICs."""
        if request.shared_dir is not None and request.shared_dir != request.workdir / "shared":
            raise FactoryError(f"a template clone shares {request.workdir / 'shared'}, not {request.shared_dir}")
        vm = await prepared_vm(request.config, request.workdir, sandbox_id=request.sandbox_id)
        assert isinstance(vm, Hypervisor)
        hypervisor = vm
        key = template_key(vm.clone_identity(), key_files(request.config))
        stack.push_async_callback(hypervisor.stop)
        started = time.monotonic()
        async with self.template.use(key) as info:
            waited = time.monotonic() - started
            memory = self.template.paths.memory
            if self.private_memory:
                memory = request.workdir / "memory"  # removed with the state dir
                await copy_sparse(self.template.paths.memory, memory)
            vm.use_memory_image(MemoryImage(str(memory), shared=self.private_memory,
                                            restore_from=str(self.template.paths.state)))
            await hypervisor.start(timeout=request.start_timeout)
        _log.info("vm cloned", extra=fields(sandbox=request.sandbox_id, template=info.key,
                                            waited_for_template=round(waited, 3)))
        if self.private_memory and request.shared_dir is not None:
            await hypervisor.add_device(SharedFs(SHARED_FS_TAG, str(request.shared_dir), "virtio-fs",
                                                 str(hypervisor.paths.virtiofsd_socket)))
        for nic in request.nics:
            await hypervisor.add_device(nic)
        return hypervisor

    async def prime(self, agent: AgentClient) -> None:
        """See :meth:`VmSource.prime`: the clone's clock and CRNG are the template's; set both from the host."""
        await agent.set_guest_date_time(time.time())
        await agent.reseed_random_dev(os.urandom(RANDOM_SEED_BYTES))


class CacheSource(VmSource):
    """A VM booted ahead of time by the VM cache server (``vm_cache_endpoint``), taken over: its dir becomes
    the sandbox's state dir, its processes ours (:mod:`kata.factory.cache`). When the server does not
    answer, refuses (a VM of another shape) or has none ready in time, ``fallback`` (the template or a cold
    boot) gives the VM instead, with a warning.
    """

    def __init__(self, config: Config, fallback: VmSource) -> None:
        from kata.factory.cache import VmCacheClient, cache_base

        self.config = config
        self.fallback = fallback
        self.client = VmCacheClient(config.factory.vm_cache_endpoint)
        self.base = cache_base(config)
        self.claimed: CachedVm | None = None
        self.name = fallback.name
        self.nics_hotplugged = fallback.nics_hotplugged
        self.share_wait = fallback.share_wait

    async def claim_workdir(self, workdir: Path, sandbox_id: str) -> tuple[tuple[int, int], ...] | None:
        """See :meth:`VmSource.claim_workdir`: GetVm from the cache server (None: it gave none)."""
        from kata.factory.cache import cache_shape, shape_key

        key = shape_key(await cache_shape(self.config, workdir), self.config)
        try:
            cached = await self.client.get_vm(key, workdir, sandbox_id, timeout=GET_VM_TIMEOUT)
        except (RpcError, FactoryError, OSError, TimeoutError) as exc:
            why = "no answer" if isinstance(exc, TimeoutError) else str(exc)
            _log.warning("vm cache %s: %s; using a %s VM", self.client.endpoint, why, self.fallback.name,
                         extra=fields(sandbox=sandbox_id))
            return None
        self.claimed = cached
        self.name, self.nics_hotplugged = "cache", True
        self.share_wait = SHARE_WAIT if self._share_hotplugged() else 0.0
        _log.info("vm taken from the cache", extra=fields(sandbox=sandbox_id, vm=cached.vm_id,
                                                           pids=[p for p, _ in cached.processes]))
        return cached.processes

    def _share_hotplugged(self) -> bool:
        from kata.factory.cache import share_in_vm

        return self.config.hypervisor.shared_fs == "virtio-fs" and not share_in_vm(self.config)

    async def start(self, stack: AsyncExitStack, request: VmRequest) -> Hypervisor:
        """See :meth:`VmSource.start`: adopt the claimed VM, then hotplug what it lacks; else the fallback."""
        from kata.factory.cache import cache_shape, clone_memory_image

        if self.claimed is None:
            return await self.fallback.start(stack, request)
        vm = await cache_shape(request.config, request.workdir)
        if not isinstance(vm, Adoptable):
            raise FactoryError(f"hypervisor {request.config.hypervisor_name} cannot take a cached VM over")
        image = clone_memory_image(request.config, request.workdir)
        if image is not None:
            assert isinstance(vm, Templatable)
            vm.use_memory_image(image)
        vm.sandbox_id = request.sandbox_id
        stack.push_async_callback(vm.stop)
        await vm.adopt(self.claimed.processes)
        if self._share_hotplugged() and request.shared_dir is not None:
            await vm.add_device(SharedFs(SHARED_FS_TAG, str(request.shared_dir), "virtio-fs",
                                         str(vm.paths.virtiofsd_socket)))
        for nic in request.nics:
            await vm.add_device(nic)
        return vm

    async def prime(self, agent: AgentClient) -> None:
        """See :meth:`VmSource.prime`: a cached clone's clock and CRNG are the template's: set both from the
        host, as for any clone. A cold-booted cached VM has its own, and its clock has run all along."""
        if self.claimed is None:
            await self.fallback.prime(agent)
            return
        if self.claimed.base == "direct":
            return
        await agent.set_guest_date_time(time.time())
        await agent.reseed_random_dev(os.urandom(RANDOM_SEED_BYTES))


def vm_source(config: Config, *, host_mode: bool = False) -> VmSource:
    """The source ``[factory]`` selects: the VM cache with ``vm_cache_number`` (falling back to what
    follows), the template with ``enable_template``, else a cold boot."""
    if host_mode:
        return DirectSource()
    source: VmSource = TemplateSource(config) if config.factory.enable_template else DirectSource()
    if config.factory.vm_cache_number:
        return CacheSource(config, source)
    return source

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
from typing import ClassVar

from kata.agent import AgentClient
from kata.agent.types import Interface
from kata.config import Config
from kata.errors import FactoryError, NotImplementedYetError
from kata.factory.template import Template, key_files, prepared_vm, template_key
from kata.hypervisor import SHARED_FS_TAG, Hypervisor, MemoryImage, SharedFs, new_hypervisor, shared_fs_for
from kata.hypervisor.accel import choose_accelerator
from kata.hypervisor.devices import Device
from kata.log import fields

__all__ = ["DirectSource", "TemplateSource", "VmRequest", "VmSource", "copy_sparse", "vm_source"]

_log = logging.getLogger("kata.factory")
RANDOM_SEED_BYTES = 512  # what the host gives each clone's CRNG (clones share the template's state)
# A hotplugged virtio-fs device is probed by the guest a moment after device_add; until then mounting
# its tag fails with ENOENT (NOT_FOUND). This bounds how long CreateSandbox retries.
SHARE_WAIT = 10.0


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

    name: ClassVar[str]
    share_wait: float = 0.0  # how long CreateSandbox may wait for the shared fs to appear
    nics_hotplugged: ClassVar[bool] = False  # the guest must wait for its NICs (UpdateInterface device_path)

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


def vm_source(config: Config, *, host_mode: bool = False) -> VmSource:
    """The source ``[factory]`` selects: the template with ``enable_template``, else a cold boot.

    Raises:
        NotImplementedYetError: ``vm_cache_number`` asks for the VM cache.
    """
    if config.factory.vm_cache_number:
        raise NotImplementedYetError("[factory] vm_cache_number: the VM cache is not implemented yet (set it to 0)")
    if config.factory.enable_template and not host_mode:
        return TemplateSource(config)
    return DirectSource()

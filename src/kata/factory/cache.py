"""The VM cache's shared facts: the shape of a cached VM, its key, where the server keeps VMs, the client.

A cached VM is booted by the cache server (:mod:`kata.factory.cache_server`, ``kata-runtime factory
init`` with ``[factory] vm_cache_number`` > 0) in a working dir laid out as a sandbox's state dir will
be: its sockets, console log and ``shared/`` (a shared bind mount). Handing it over renames that dir to
the sandbox's state dir: bound sockets, open logs, virtiofsd's root and QEMU's 9p root all move with it.
The sandbox then adopts the processes (:class:`kata.hypervisor.Adoptable`) and adds what is its own
(NICs; virtio-fs when the VM is a clone of a virtio-fs template, which cannot hold it).

Both sides compute the key from their own configuration (the VMM's command line with host paths made
neutral and the identity of the VMM binary, kernel, initrd and image, as for templates), so a cached VM
is only ever handed to a sandbox of exactly its shape.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from kata.config import Config
from kata.errors import FactoryError
from kata.factory.pb import vmcache_pb2
from kata.factory.template import Template, key_files, prepared_vm, template_key
from kata.hypervisor import Hypervisor, MemoryImage, Templatable, new_hypervisor, shared_fs_for
from kata.hypervisor.accel import choose_accelerator

__all__ = [
    "CACHE_SERVICE",
    "CacheBase",
    "CachedVm",
    "VmCacheClient",
    "cache_base",
    "cache_directory",
    "cache_shape",
    "clone_memory_image",
    "shape_key",
    "share_in_vm",
]

_log = logging.getLogger("kata.factory")
CACHE_SERVICE = "kata.vmcache.v1.VmCache"
CacheBase = Literal["direct", "template"]
CONNECT_TIMEOUT = 1.0
M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class CachedVm:
    """A VM the server handed over: its processes (VMM first) as (pid, start time) pairs."""

    vm_id: str
    key: str
    base: CacheBase
    processes: tuple[tuple[int, int], ...]
    boot_seconds: float

    @classmethod
    def from_message(cls, message: vmcache_pb2.CachedVm) -> CachedVm:
        """The handed-over VM of a GetVm answer.

        Raises:
            FactoryError: the answer names no process or an unknown base.
        """
        if message.source not in ("direct", "template") or not message.processes:
            raise FactoryError(f"vm cache: malformed answer for vm {message.vm_id!r}")
        base: CacheBase = "template" if message.source == "template" else "direct"
        return cls(vm_id=message.vm_id, key=message.key, base=base,
                   processes=tuple((p.pid, p.start_time) for p in message.processes),
                   boot_seconds=message.boot_seconds)


def cache_base(config: Config) -> CacheBase:
    """How the server makes its VMs: clones of the template with ``enable_template``, else cold boots."""
    return "template" if config.factory.enable_template else "direct"


def cache_directory(config: Config) -> Path:
    """Where the server keeps its VMs' working dirs: beside the endpoint (``cache.sock`` -> ``cache.sock.vms``),
    so on the filesystem of the state root as long as both are below /run."""
    endpoint = Path(config.factory.vm_cache_endpoint).absolute()
    return endpoint.with_name(f"{endpoint.name}.vms")


async def cache_shape(config: Config, workdir: Path) -> Hypervisor:
    """The prepared (not started) VM a cached VM is in ``workdir``: a template clone's devices, or for a
    cold boot the share of ``workdir/shared`` on the command line (virtio-fs or 9p). NICs are never in it.

    Raises:
        FactoryError: the configured hypervisor cannot make templates (or take VMs over).
        ConfigError, AcceleratorError, HypervisorError: the VM cannot be prepared.
    """
    if cache_base(config) == "template":
        vm = await prepared_vm(config, workdir)
        assert isinstance(vm, Hypervisor)
        return vm
    accelerator = (await asyncio.to_thread(choose_accelerator, config.hypervisor)).accelerator
    hypervisor = new_hypervisor(config.hypervisor_name, config.hypervisor, workdir, accelerator=accelerator)
    if not isinstance(hypervisor, Templatable):
        raise FactoryError(f"hypervisor {config.hypervisor_name} cannot keep a VM cache")
    share = shared_fs_for(config.hypervisor, hypervisor.paths, str(workdir / "shared"))
    await hypervisor.prepare([share] if share is not None else [])
    return hypervisor


def share_in_vm(config: Config) -> bool:
    """Whether a cached VM has the share already: not a clone of a virtio-fs template (vhost-user-fs
    blocks migration, so its sandbox hotplugs virtio-fs), nor a VM without a shared fs."""
    shared_fs = config.hypervisor.shared_fs
    if shared_fs not in ("virtio-fs", "virtio-9p"):
        return False
    return not (cache_base(config) == "template" and shared_fs == "virtio-fs")


def shape_key(vm: Hypervisor, config: Config) -> str:
    """The key of a prepared :func:`cache_shape` VM (see :func:`kata.factory.template.template_key`)."""
    assert isinstance(vm, Templatable)
    return f"{cache_base(config)}-{template_key(vm.clone_identity(), key_files(config))}"


def clone_memory_image(config: Config, workdir: Path) -> MemoryImage | None:
    """The RAM of a cached template clone in ``workdir``, as its adopter must know it (hotplugged memory
    must never land in the template's file); None for a cold-booted VM."""
    if cache_base(config) != "template":
        return None
    if config.hypervisor.shared_fs == "virtio-fs":
        return MemoryImage(str(workdir / "memory"), shared=True)  # the clone's private copy
    return MemoryImage(str(Template(config).paths.memory), shared=False)


class VmCacheClient:
    """Calls on the cache server at ``endpoint`` (one connection per call: calls are rare)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    async def _call(self, method: str, request: Message, response_type: type[M], timeout: float) -> M:
        from kata.ttrpc.aio.client import connect_unix

        async with asyncio.timeout(CONNECT_TIMEOUT):
            client = await connect_unix(self.endpoint)
        try:
            return await client.call(CACHE_SERVICE, method, request, response_type, timeout=timeout)
        finally:
            await client.close()

    async def get_vm(self, key: str, target_dir: Path, sandbox_id: str, timeout: float) -> CachedVm:
        """Take a VM over: the server renames its dir to ``target_dir`` and lets go of it.

        Raises:
            RpcError: the server refused (FAILED_PRECONDITION: other key; ALREADY_EXISTS; UNAVAILABLE).
            TimeoutError: no connection within a second.
            FactoryError: the answer is malformed.
        """
        request = vmcache_pb2.GetVmRequest(key=key, target_dir=str(target_dir), sandbox_id=sandbox_id)
        return CachedVm.from_message(await self._call("GetVm", request, vmcache_pb2.CachedVm, timeout))

    async def status(self, timeout: float = 5.0) -> vmcache_pb2.CacheStatus:
        """What the server holds.

        Raises:
            RpcError, TimeoutError: as :meth:`get_vm`.
        """
        return await self._call("Status", empty_pb2.Empty(), vmcache_pb2.CacheStatus, timeout)

    async def quit(self, timeout: float = 30.0) -> None:
        """Ask the server to stop its cached VMs and exit; returns once its socket is gone.

        Raises:
            RpcError, TimeoutError: as :meth:`get_vm`; TimeoutError also when it is still there after
                ``timeout`` s.
        """
        await self._call("Quit", empty_pb2.Empty(), empty_pb2.Empty, timeout)
        async with asyncio.timeout(timeout):
            while os.path.exists(self.endpoint):
                await asyncio.sleep(0.05)

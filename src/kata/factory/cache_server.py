"""The VM cache server: keeps ``[factory] vm_cache_number`` VMs booted to a ready agent and hands them over.

``kata-runtime factory init`` runs it in the foreground (as Kata's does) on ``vm_cache_endpoint``
(ttRPC, service ``kata.vmcache.v1.VmCache``, socket mode 0600). VMs are made one at a time (a cold
boot, or a clone of the template with ``enable_template``), each in ``<cache dir>/<vm id>/`` laid out
as a sandbox's state dir (:mod:`kata.factory.cache`); a handed-over VM is refilled at once. Before
each hand-over the server recomputes its key: VMs made from what is now stale (a rebuilt kernel) are
stopped, never handed over. The processes of handed-over VMs stay our children: they are reaped here
when they end, and outlive the server if it stops first.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from google.protobuf import empty_pb2

from kata.agent import AgentClient
from kata.config import Config
from kata.errors import KataError
from kata.factory.cache import (
    CACHE_SERVICE,
    cache_base,
    cache_directory,
    cache_shape,
    shape_key,
    share_in_vm,
)
from kata.factory.pb import vmcache_pb2
from kata.factory.source import TemplateSource, VmRequest
from kata.factory.template import HANGUP_PAUSE
from kata.hypervisor import SHARED_FS_TAG, Adoptable, Hypervisor
from kata.hypervisor.process import proc_stat
from kata.log import fields
from kata.ttrpc.dispatch import CallContext, MethodSpec, Router
from kata.ttrpc.status import AlreadyExistsError, FailedPreconditionError, UnavailableError

__all__ = ["CacheServer", "VmMaker", "serve_cache"]

_log = logging.getLogger("kata.factory.cache")
BOOT_TIMEOUT = 120.0  # a cold boot to a ready agent takes 6-10 s under TCG; much longer on a busy host
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)  # after consecutive failures to make a VM
QUIT_TIMEOUT = 30.0
WARM_UP_ID = "vm-cache-warm-up"
VM_ID_LENGTH = 16
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with its terminating NUL


@dataclass
class Entry:
    """One VM of the cache: ready (its agent answered) and held until it is handed over or stopped."""

    vm_id: str
    workdir: Path
    key: str
    base: str
    vm: Hypervisor
    stack: AsyncExitStack  # stops the VM, unmounts its share and removes its dir
    boot_seconds: float
    ready_at: float = field(default_factory=time.time)

    def message(self) -> vmcache_pb2.CachedVm:
        """The VM as the protocol describes it, with its live processes (VMM first)."""
        processes = [vmcache_pb2.Process(pid=pid, start_time=found[1], name="vmm" if i == 0 else "helper")
                     for i, pid in enumerate(self.vm.pids()) if (found := proc_stat(pid)) is not None]
        return vmcache_pb2.CachedVm(vm_id=self.vm_id, key=self.key, source=self.base, processes=processes,
                                    ready_at=self.ready_at, boot_seconds=self.boot_seconds)


VmMaker = Callable[[str, Path, AsyncExitStack], Awaitable[tuple[Hypervisor, str]]]
"""Start a VM (id, working dir, undo stack) to a ready agent; its VM and key. The test seam of the server."""


def _prepare_workdir(stack: AsyncExitStack, workdir: Path) -> None:
    """The VM's dir as a sandbox's state dir is: ``shared/`` a shared bind mount; undo: unmount, remove."""
    from kata.sandbox.mounts import make_shared, remove_tree, unmount

    workdir.mkdir(mode=0o750)
    stack.callback(remove_tree, workdir)
    (workdir / "shared").mkdir(mode=0o750)
    make_shared(workdir / "shared")
    stack.callback(unmount, workdir / "shared")


def vm_maker(config: Config) -> VmMaker:
    """Make VMs the way ``config`` says: cold boots, or template clones (the template made when missing)."""
    base = cache_base(config)
    clones = TemplateSource(config) if base == "template" else None

    async def make(vm_id: str, workdir: Path, stack: AsyncExitStack) -> tuple[Hypervisor, str]:
        _prepare_workdir(stack, workdir)
        shape = await cache_shape(config, workdir)
        key = shape_key(shape, config)
        if clones is not None:  # the clone is prepared again by the template source, identically
            vm = await clones.start(stack, VmRequest(config=config, workdir=workdir, sandbox_id=vm_id,
                                                     shared_dir=None, start_timeout=BOOT_TIMEOUT))
        else:
            vm = shape
            stack.push_async_callback(vm.stop)
            await vm.start(timeout=BOOT_TIMEOUT)
        await _ready_and_warm(vm, config, workdir, float(max(config.agent.dial_timeout, BOOT_TIMEOUT)),
                              warm_up=share_in_vm(config))
        return vm, key

    return make


async def _ready_and_warm(vm: Hypervisor, config: Config, workdir: Path, timeout: float, *,
                          warm_up: bool) -> None:
    """Until the agent answers and has loaded its services, then (``warm_up``: the VM has its share) one
    throwaway container; then hang up, and give the guest the time to see it (the next connection,
    the sandbox's, starts a new ttRPC session)."""
    agent = await AgentClient.connect(vm.agent.address, timeout=timeout)
    try:
        await agent.wait_ready(timeout)
        await agent.get_guest_details()  # waits until the agent's services are loaded
        if warm_up:
            await _warm_up(agent, config, workdir)
    finally:
        await agent.close()
    await asyncio.sleep(HANGUP_PAUSE)


async def _warm_up(agent: AgentClient, config: Config, workdir: Path) -> None:
    """Create, start, wait for and remove a container running busybox ``true`` from the share.

    Under TCG each QEMU translates guest code the first time it runs; a VM's first container pays for
    the agent's and the kernel's container paths. Measured (library, 5 sandboxes on cached VMs each way):
    the sandbox's delete (RemoveContainer, DestroySandbox: unmounts and cgroup removal run here first)
    0.12-0.19 s -> 0.05-0.07 s; its create and start did not change beyond the noise (what dominates
    there is the guest reading the container's own files and its init's set-up). The container leaves
    nothing in the guest (RemoveContainer unmounts its storage and removes its cgroup) and no sandbox is
    created, so the sandbox's CreateSandbox is the guest's first. A failure only costs the speed-up
    (logged).
    """
    from kata.agent import ContainerRequest
    from kata.image.tree import BUSYBOX
    from kata.oci import Root
    from kata.oci.defaults import default_spec
    from kata.sandbox.guestspec import guest_container
    from kata.sandbox.paths import VM_LAYOUT
    from kata.sandbox.requests import shared_storage

    share = workdir / "shared" / WARM_UP_ID
    rootfs = share / "rootfs"
    try:
        for name in ("bin", "proc", "sys", "dev", "tmp", "etc"):
            (rootfs / name).mkdir(parents=True)
        shutil.copyfile(BUSYBOX, rootfs / "bin" / "busybox")
        (rootfs / "bin" / "busybox").chmod(0o755)
        base = default_spec()
        assert base.process is not None
        spec = replace(base, root=Root(path=str(rootfs), readonly=True),
                       process=replace(base.process, terminal=False, args=("/bin/busybox", "true")))
        plan = guest_container(spec, WARM_UP_ID, str(rootfs), sources={})
        storage = shared_storage(config.hypervisor.shared_fs, VM_LAYOUT, str(workdir / "shared"), SHARED_FS_TAG)
        await agent.create_container(ContainerRequest(container_id=WARM_UP_ID, exec_id=WARM_UP_ID, spec=plan.spec,
                                                      storages=(storage,)))
        try:
            await agent.start_container(WARM_UP_ID)
            await agent.wait_process(WARM_UP_ID, WARM_UP_ID)
        finally:
            await agent.remove_container(WARM_UP_ID)
    except (KataError, OSError) as exc:
        _log.warning("vm cache: warm-up container failed (the VM is used anyway): %s", exc)
    finally:
        shutil.rmtree(share, ignore_errors=True)


class CacheServer:
    """The pool of ready VMs and the VmCache service on top of it."""

    def __init__(self, config: Config, *, make: VmMaker | None = None, directory: Path | None = None) -> None:
        self.config = config
        self.number = config.factory.vm_cache_number
        self.directory = directory or cache_directory(config)
        self.base = cache_base(config)
        self._make = make or vm_maker(config)
        self.ready: list[Entry] = []
        self.booting = 0
        self.served = 0
        self.failed = 0
        self._failures_in_row = 0
        self._changed = asyncio.Condition()
        self.quit = asyncio.Event()
        self._filler: asyncio.Task[None] | None = None
        self._key_check: Callable[[], Awaitable[str]] = self._current_key

    # the pool

    def start(self) -> None:
        """Start filling the pool (in the running loop)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._filler = asyncio.get_running_loop().create_task(self._fill(), name="vm-cache-fill")

    async def close(self) -> None:
        """Stop filling and stop every cached VM (handed-over VMs run on)."""
        if self._filler is not None:
            self._filler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filler
        entries, self.ready = self.ready, []
        for entry in entries:
            await self._drop(entry, "server stops")
        with contextlib.suppress(OSError):
            self.directory.rmdir()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _fill(self) -> None:
        while True:
            while len(self.ready) + self.booting < self.number:
                if not await self._make_one():
                    delay = RETRY_DELAYS[min(self._failures_in_row, len(RETRY_DELAYS)) - 1]
                    await asyncio.sleep(delay)
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.ready) + self.booting < self.number)

    async def _make_one(self) -> bool:
        vm_id = uuid.uuid4().hex[:VM_ID_LENGTH]
        workdir = self.directory / vm_id
        self.booting += 1
        started = time.monotonic()
        stack = AsyncExitStack()
        try:
            try:
                vm, key = await self._make(vm_id, workdir, stack)
            except BaseException:
                await stack.aclose()
                raise
        except (KataError, OSError) as exc:
            self.failed += 1
            self._failures_in_row += 1
            _log.warning("vm cache: could not make a VM: %s", exc, extra=fields(vm=vm_id))
            return False
        finally:
            self.booting -= 1
            await self._notify()
        self._failures_in_row = 0
        entry = Entry(vm_id, workdir, key, self.base, vm, stack, round(time.monotonic() - started, 3))
        self.ready.append(entry)
        _log.info("vm cache: vm ready", extra=fields(vm=vm_id, boot_seconds=entry.boot_seconds,
                                                      ready=len(self.ready)))
        await self._notify()
        return True

    async def _drop(self, entry: Entry, why: str) -> None:
        _log.info("vm cache: stopping vm (%s)", why, extra=fields(vm=entry.vm_id))
        await entry.stack.aclose()

    async def _current_key(self) -> str:
        """The key a VM made now would have (stale files show here first)."""
        return shape_key(await cache_shape(self.config, self.directory / "key-probe"), self.config)

    async def _drop_stale(self) -> str:
        key = await self._key_check()
        stale = [e for e in self.ready if e.key != key]
        if stale:
            self.ready = [e for e in self.ready if e.key == key]
            for entry in stale:
                await self._drop(entry, f"stale: key {entry.key}, now {key}")
            await self._notify()
        return key

    async def _take(self, timeout: float) -> Entry:
        async with asyncio.timeout(timeout):
            async with self._changed:
                while not self.ready:
                    if self.booting == 0 and self._failures_in_row:
                        raise UnavailableError(f"vm cache: no VM ready, and the last {self._failures_in_row} "
                                               "attempts to make one failed")
                    await self._changed.wait()
                return self.ready.pop(0)

    async def _take_fresh(self, key: str, timeout: float) -> Entry:
        """The first ready VM of ``key`` whose VMM still runs, waiting up to ``timeout`` s. A VM that was
        booting when the key changed (its key was computed before the boot) becomes ready stale, and a
        VMM can die while it waits: either is stopped, not handed over."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            entry = await self._take(deadline - loop.time())
            if entry.key == key and entry.vm.pids():
                return entry
            why = f"stale: key {entry.key}, now {key}" if entry.key != key else "its VMM is gone"
            await self._drop(entry, why)
            await self._notify()  # refill

    async def get_vm(self, key: str, target: Path, sandbox_id: str, timeout: float) -> vmcache_pb2.CachedVm:
        """Hand a VM over: rename its dir to ``target``, detach it; wait up to ``timeout`` s for one.

        Raises:
            FailedPreconditionError: ``key`` is not the key of the VMs the cache makes, or ``target`` is
                on another filesystem (or not absolute).
            AlreadyExistsError: ``target`` exists.
            UnavailableError: none is ready, none is booting and making one failed.
            TimeoutError: none became ready in time.
        """
        if not target.is_absolute():
            raise FailedPreconditionError(f"vm cache: target {target} is not an absolute path")
        current = await self._drop_stale()
        if key != current:
            raise FailedPreconditionError(f"vm cache: its VMs have key {current}, the caller's configuration "
                                          f"gives {key}")
        if target.exists():  # rename(2) would replace an empty directory
            raise AlreadyExistsError(f"vm cache: {target} exists")
        entry = await self._take_fresh(current, timeout)
        try:
            os.rename(entry.workdir, target)
        except OSError as exc:
            self.ready.insert(0, entry)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise AlreadyExistsError(f"vm cache: {target} exists") from exc
            if exc.errno == errno.EXDEV:
                raise FailedPreconditionError(f"vm cache: {target} is on another filesystem than "
                                              f"{self.directory}") from exc
            raise FailedPreconditionError(f"vm cache: move {entry.workdir} to {target}: {exc.strerror}") from exc
        message = entry.message()
        assert isinstance(entry.vm, Adoptable)
        await entry.vm.detach()  # its undo stack is dropped: the dir, mount and processes are the caller's
        self.served += 1
        await self._notify()  # refill
        _log.info("vm cache: vm handed over", extra=fields(vm=entry.vm_id, sandbox=sandbox_id, target=str(target)))
        return message

    def status(self) -> vmcache_pb2.CacheStatus:
        """What the cache holds now."""
        return vmcache_pb2.CacheStatus(number=self.number, ready=len(self.ready), booting=self.booting,
                                       key=self.ready[0].key if self.ready else "", served=self.served,
                                       pid=os.getpid(), source=self.base, failed=self.failed,
                                       vms=[e.message() for e in self.ready])

    # the service

    def methods(self) -> dict[str, MethodSpec]:
        """The VmCache method table for a :class:`kata.ttrpc.dispatch.Router`."""
        return {
            "GetVm": (vmcache_pb2.GetVmRequest, vmcache_pb2.CachedVm, self._rpc_get_vm),
            "Status": (empty_pb2.Empty, vmcache_pb2.CacheStatus, self._rpc_status),
            "Quit": (empty_pb2.Empty, empty_pb2.Empty, self._rpc_quit),
        }

    async def _rpc_get_vm(self, request: vmcache_pb2.GetVmRequest, ctx: CallContext) -> vmcache_pb2.CachedVm:
        # Leave the caller a moment to read the answer: a VM handed over after it gave up would be nobody's.
        remaining = ctx.time_remaining()
        timeout = BOOT_TIMEOUT if remaining is None else max(0.0, remaining - 0.5)
        try:
            return await self.get_vm(request.key, Path(request.target_dir), request.sandbox_id, timeout)
        except TimeoutError as exc:
            raise UnavailableError(f"vm cache: no VM became ready within {timeout:.1f} s") from exc

    def _rpc_status(self, request: empty_pb2.Empty, ctx: CallContext) -> vmcache_pb2.CacheStatus:
        del request, ctx
        return self.status()

    async def _rpc_quit(self, request: empty_pb2.Empty, ctx: CallContext) -> empty_pb2.Empty:
        del request, ctx
        self.quit.set()
        return empty_pb2.Empty()


async def serve_cache(config: Config, *, on_ready: Callable[[CacheServer], None] | None = None) -> None:
    """Serve the VM cache on ``vm_cache_endpoint`` until Quit, SIGTERM or SIGINT; then stop the cached VMs.

    Raises:
        FactoryError: another server answers on the endpoint.
        OSError: the endpoint cannot be bound.
    """
    import signal

    from kata.errors import FactoryError
    from kata.ttrpc.aio.server import AsyncServer

    endpoint = Path(config.factory.vm_cache_endpoint).absolute()
    longest = cache_directory(config) / ("0" * VM_ID_LENGTH) / "virtiofsd.sock"
    if len(os.fsencode(longest)) > MAX_SOCKET_PATH:
        raise FactoryError(f"vm cache: vm_cache_endpoint {endpoint} is too deep: its VMs' sockets ({longest}) "
                           f"would exceed the {MAX_SOCKET_PATH} bytes of a unix socket path")
    if await _answers(endpoint):
        raise FactoryError(f"vm cache: a server already answers on {endpoint}")
    cache = CacheServer(config)
    router = Router()
    router.register(CACHE_SERVICE, cache.methods())
    server = AsyncServer(router)
    endpoint.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        endpoint.unlink()  # a dead server's socket
    old_umask = os.umask(0o177)
    try:
        await server.listen_unix(str(endpoint))
    finally:
        os.umask(old_umask)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, cache.quit.set)
    cache.start()
    _log.info("vm cache serving", extra=fields(endpoint=str(endpoint), number=cache.number, base=cache.base))
    if on_ready is not None:
        on_ready(cache)
    try:
        await cache.quit.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await cache.close()
        await server.close(grace=QUIT_TIMEOUT)
        with contextlib.suppress(FileNotFoundError):
            endpoint.unlink()
        shutil.rmtree(cache.directory / "key-probe", ignore_errors=True)


async def _answers(endpoint: Path) -> bool:
    from kata.factory.cache import VmCacheClient

    if not endpoint.exists():
        return False
    try:
        await VmCacheClient(str(endpoint)).status(timeout=2.0)
    except (KataError, OSError, TimeoutError):
        return False
    return True

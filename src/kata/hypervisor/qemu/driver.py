"""QemuHypervisor: one QEMU (plus its virtiofsd) per VM, every acquired resource registered for undo."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Literal

from kata.config.schema import HypervisorConfig
from kata.errors import HypervisorError, StateError
from kata.hypervisor.accel import choose_accelerator
from kata.hypervisor.base import Capabilities, Hypervisor, MemoryImage, VmEvent, with_standard_devices
from kata.hypervisor.devices import AgentChannel, Device, NetDevice, RootfsImage, SharedFs
from kata.hypervisor.process import ChildProcess, adopt, spawn
from kata.hypervisor.qemu.args import MemoryBackend, VmSpec, build_argv, single_threaded_tcg, uses_vhost_user
from kata.hypervisor.qemu.hotplug import DeviceManager, PortPool
from kata.hypervisor.qemu.qmp import QmpClient, QmpEvent
from kata.hypervisor.qemu.resize import MEMORY_BLOCK_MIB, MemoryResizer, VcpuResizer
from kata.hypervisor.qemu.spec import HostResources, host_resources, rootfs_image, vm_spec
from kata.hypervisor.state import VmState
from kata.hypervisor.virtiofsd import start_virtiofsd
from kata.log import fields

__all__ = ["QemuHypervisor"]

_log = logging.getLogger("kata.hypervisor.qemu")
# glibc malloc, unless the environment says otherwise: blocks over 64 KiB get their own mapping, so what
# QEMU frees goes back to the host (with the dynamic threshold, the TCG vCPU thread's resized TLBs and
# other large blocks stay in its arena and the heap once freed): ~2 MiB less RSS per idle VM, measured.
QEMU_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


class QemuHypervisor(Hypervisor):
    """A QEMU VM (q35 or microvm) driven over QMP. See :class:`kata.hypervisor.base.Hypervisor`."""

    name = "qemu"
    term_grace = 3.0  # seconds between SIGTERM and SIGKILL when QEMU does not quit

    def __init__(self, config: HypervisorConfig, workdir: Path, *, sandbox_id: str = "",
                 accelerator: str | None = None) -> None:
        super().__init__(config, workdir, sandbox_id=sandbox_id, accelerator=accelerator)
        self._devices: list[Device] = []
        self._host: HostResources | None = None
        self._qmp = QmpClient(f"pykata-{sandbox_id}" if sandbox_id else "pykata")
        self._qemu: ChildProcess | None = None
        self._helpers: list[ChildProcess] = []
        self._resources: AsyncExitStack | None = None
        self._watcher: asyncio.Task[int] | None = None
        self._exit_status: int | None = None
        self._stopping = False
        self._stop_grace = 10.0
        self._stop_lock = asyncio.Lock()
        self._hot: DeviceManager | None = None
        self._vcpus: VcpuResizer | None = None
        self._memory: MemoryResizer | None = None
        self._image: MemoryImage | None = None

    def _fields(self, **extra: object) -> dict[str, dict[str, object]]:
        return fields(sandbox=self.sandbox_id, **extra)

    @property
    def agent(self) -> AgentChannel:
        """The agent channel (after prepare).

        Raises:
            StateError: before prepare.
        """
        found = next((d for d in self._devices if isinstance(d, AgentChannel)), None)
        if found is None:
            raise StateError("vm: no agent channel before prepare", state=self.state.value,
                             required=("prepared",))
        return found

    @property
    def spec(self) -> VmSpec:
        """The VmSpec QEMU is (or would be) started with.

        Raises:
            StateError: before prepare.
            HypervisorError: the devices do not fit the machine type.
        """
        if self._host is None or self.accelerator not in ("kvm", "tcg"):
            raise StateError("vm: no spec before prepare", state=self.state.value, required=("prepared",))
        accelerator: Literal["kvm", "tcg"] = "kvm" if self.accelerator == "kvm" else "tcg"
        spec = vm_spec(self.config, paths=self.paths, accelerator=accelerator, devices=tuple(self._devices),
                       host=self._host, name=f"sandbox-{self.sandbox_id}" if self.sandbox_id else "pykata")
        if self._image is None:
            return spec
        backend = MemoryBackend("file", self._image.memory_path, share=self._image.shared)
        return replace(spec, memory_backend=backend, incoming=bool(self._image.restore_from))

    def use_memory_image(self, image: MemoryImage) -> None:
        """See :class:`kata.hypervisor.base.Templatable`: RAM in a file, and maybe a restore instead of a boot.

        Raises:
            StateError: the VM was started already.
        """
        if self.state not in (VmState.NEW, VmState.PREPARED):
            raise StateError("vm: the memory image is chosen before start", state=self.state.value,
                             required=("new", "prepared"))
        self._image = image

    async def prepare(self, devices: Sequence[Device] = ()) -> None:
        """See :meth:`Hypervisor.prepare`; also picks the accelerator (``auto``: cached probe)."""
        self._life.require("prepare")
        if self.accelerator in (None, "auto"):
            self.accelerator = (await asyncio.to_thread(choose_accelerator, self.config)).accelerator
        if self.accelerator not in ("kvm", "tcg"):
            raise HypervisorError(f"qemu: unknown accelerator {self.accelerator!r}")
        image = rootfs_image(self.config)
        self._devices = list(with_standard_devices(self.paths, devices)) + ([image] if image else [])
        self._check_ids(self._devices)
        self._host = host_resources()
        build_argv(self.spec)  # fail now, not at start, when the devices do not fit
        self._life.move(VmState.PREPARED)

    @staticmethod
    def _check_ids(devices: Sequence[Device]) -> None:
        ids = [d.id for d in devices]
        if duplicates := sorted({i for i in ids if ids.count(i) > 1}):
            raise HypervisorError(f"qemu: duplicate device ids {', '.join(duplicates)}")

    async def start(self, timeout: float = 30.0) -> None:
        """See :meth:`Hypervisor.start`: virtiofsd first, then QEMU, then a QMP session."""
        self._life.require("start")
        argv = build_argv(spec := self.spec)
        started = time.monotonic()
        with self._until_running("start vm", f"QEMU not ready within {timeout:g} s"):
            async with AsyncExitStack() as stack:
                async with asyncio.timeout(timeout):
                    await self._launch(stack, spec, argv)
                self._resources = stack.pop_all()
        _log.info("vm started", extra=self._fields(pid=self._qemu.pid if self._qemu else 0,
                                                    machine=spec.machine, accelerator=spec.accelerator,
                                                    seconds=round(time.monotonic() - started, 3)))

    @contextlib.contextmanager
    def _until_running(self, verb: str, timed_out: str) -> Iterator[None]:
        """Around a start or an adopt: running when the block succeeds; any failure ends in stopped,
        as a HypervisorError saying ``verb`` (``timed_out`` for a TimeoutError) and what QEMU left."""
        try:
            yield
        except TimeoutError as exc:
            self._life.move(VmState.STOPPED)
            raise HypervisorError(f"{verb}: {timed_out}{self._diagnostics()}") from exc
        except HypervisorError as exc:
            self._life.move(VmState.STOPPED)
            raise HypervisorError(f"{verb}: {exc}{self._diagnostics()}") from exc
        except BaseException:
            self._life.move(VmState.STOPPED)
            raise
        self._life.move(VmState.RUNNING)

    def _diagnostics(self) -> str:
        children = [c for c in (self._qemu, *self._helpers) if c is not None]
        parts = [f"qemu exit status {self._qemu.returncode}"] if self._qemu is not None else []
        parts += [f"{c.name}: {tail}" for c in children if (tail := c.stderr_tail())]
        if console := _tail(self.paths.console_log):
            parts.append(f"console: {console}")
        return f" ({'; '.join(parts)})" if parts else ""

    async def _launch(self, stack: AsyncExitStack, spec: VmSpec, argv: list[str]) -> None:
        self._own_workdir(stack)
        for device in spec.devices:
            if isinstance(device, SharedFs) and device.kind == "virtio-fs":
                self._helpers.append(await self._start_virtiofsd(stack, device))
        stack.callback(_unlink, self.paths.qmp_socket)
        for device in spec.devices:
            if isinstance(device, AgentChannel) and device.transport == "serial":
                stack.callback(_unlink, Path(device.socket_path))
        stack.push_async_callback(self._qmp.close)
        stack.push_async_callback(self._join_watcher)
        fds = [fd for d in spec.devices if isinstance(d, NetDevice) for fd in d.tap_fds]
        stack.callback(_unlink, self.paths.qemu_log)
        qemu = await spawn(argv, name="qemu", log_path=self.paths.qemu_log, pass_fds=fds, sandbox_id=self.sandbox_id,
                           env_defaults=QEMU_ENV)
        await self._take_control(stack, spec, qemu)
        if self._image is not None and self._image.restore_from:
            await self._restore(self._image.restore_from)

    async def _take_control(self, stack: AsyncExitStack, spec: VmSpec, qemu: ChildProcess) -> None:
        """Watch ``qemu``, open the QMP session and the hotplug/resize controllers; undo: shut it down."""
        self._qemu = qemu
        stack.push_async_callback(self._shutdown_qemu, qemu)
        self._watcher = asyncio.get_running_loop().create_task(self._watch_exit(qemu), name="qemu-exit")
        await self._qmp.connect(str(self.paths.qmp_socket), alive=qemu.alive)
        stack.callback(self._qmp.on_event(self._on_qmp_event))
        self._attach_controllers(spec)

    async def _restore(self, state_path: str) -> None:
        """Load the saved device state; RAM is the image file already (x-ignore-shared), so only devices
        travel. A template is saved stopped, so the clone arrives paused: continue it."""
        await self._qmp.migrate_set_capability("x-ignore-shared")
        await self._qmp.migrate_incoming(f"exec:cat {shlex.quote(state_path)}")
        await self._qmp.wait_migration()
        if not (await self._qmp.query_status()).running:
            await self._qmp.cont()

    def _own_workdir(self, stack: AsyncExitStack) -> None:
        workdir = self.paths.workdir
        if workdir.is_dir():
            return
        try:
            workdir.mkdir(parents=True, mode=0o750)
        except OSError as exc:
            raise HypervisorError(f"create {workdir}: {exc.strerror}") from exc
        # Created here, so removed here: the files we put in it, then the (then empty) directory.
        stack.callback(self._remove_workdir)
        stack.callback(_unlink, self.paths.console_log)

    def _remove_workdir(self) -> None:
        try:
            self.paths.workdir.rmdir()
        except OSError as exc:
            _log.warning("vm workdir left behind: %s", exc.strerror,
                         extra=self._fields(path=str(self.paths.workdir)))

    async def _start_virtiofsd(self, stack: AsyncExitStack, fs: SharedFs) -> ChildProcess:
        return await start_virtiofsd(stack, fs, daemon=self.config.virtio_fs_daemon,
                                     cache=self.config.virtio_fs_cache,
                                     extra_args=self.config.virtio_fs_extra_args,
                                     debug=self.config.enable_debug, sandbox_id=self.sandbox_id)

    async def _start_hot_fs(self, fs: SharedFs) -> Callable[[], Awaitable[object]]:
        """A virtiofsd for a hotplugged share: stopped by the returned undo, or at the latest by stop()."""
        undo = AsyncExitStack()
        try:
            self._helpers.append(await self._start_virtiofsd(undo, fs))
        except BaseException:
            await undo.aclose()
            raise
        if self._resources is not None:
            self._resources.push_async_callback(undo.aclose)
        return undo.aclose

    def _attach_controllers(self, spec: VmSpec) -> None:
        self._hot = DeviceManager(self._qmp, spec.machine, PortPool(spec.hotplug_ports), self._start_hot_fs)
        if spec.machine == "q35":
            self._vcpus = VcpuResizer(self._qmp, spec.vcpus, spec.max_vcpus or spec.vcpus,
                                      unplug=not single_threaded_tcg(spec))
            backend = spec.memory_backend
            share = uses_vhost_user(spec.devices) or backend.share or backend.kind == "memfd"
            if self._image is not None:  # hotplugged RAM must never land in (and grow) the image file
                backend, share = MemoryBackend("memfd"), True
            # A virtio-pmem rootfs is a memory device too: QEMU counts it in plugged memory and maxmem.
            pmem = sum(d.size for d in spec.devices if isinstance(d, RootfsImage) and d.kind == "virtio-pmem")
            pmem_mib = -(-pmem // (1 << 20))
            if pmem % (MEMORY_BLOCK_MIB << 20) and spec.max_memory_mib > spec.memory_mib:
                _log.warning("the rootfs image is not a whole number of 128 MiB memory sections: memory "
                             "hotplugged after it will not come online (kata-runtime image build pads it)",
                             extra=self._fields())
            self._memory = MemoryResizer(self._qmp, backend, share=share, max_mib=spec.max_memory_mib,
                                         slots=spec.memory_slots, not_ram_mib=pmem_mib)

    async def _shutdown_qemu(self, qemu: ChildProcess) -> None:
        """quit over QMP, then SIGTERM, then SIGKILL: each step bounded."""
        if qemu.alive() and self._qmp.connected:
            try:
                async with asyncio.timeout(self._stop_grace):
                    await self._qmp.quit()
                    await qemu.wait()
                return
            except TimeoutError:
                _log.warning("qemu did not quit within %g s", self._stop_grace,
                             extra=self._fields(pid=qemu.pid))
        await qemu.terminate(self.term_grace)

    async def _watch_exit(self, qemu: ChildProcess) -> int:
        code = await qemu.wait()
        self._exit_status = code
        if self._life.live and not self._stopping:
            _log.warning("qemu exited on its own", extra=self._fields(status=code, stderr=qemu.stderr_tail()))
            self._life.move(VmState.EXITED)
        self._emit(VmEvent("EXITED", {"status": code}))
        return code

    async def _join_watcher(self) -> None:
        if self._watcher is not None:
            await asyncio.shield(self._watcher)

    def _on_qmp_event(self, event: QmpEvent) -> None:
        if event.name == "STOP" and self.state is VmState.RUNNING:
            self._life.move(VmState.PAUSED)
        elif event.name == "RESUME" and self.state is VmState.PAUSED:
            self._life.move(VmState.RUNNING)
        self._emit(VmEvent(event.name, event.data, event.timestamp))

    async def stop(self, timeout: float = 10.0) -> None:
        """See :meth:`Hypervisor.stop`: QMP quit, SIGTERM, SIGKILL; then virtiofsd, sockets, workdir.

        Raises:
            HypervisorError: a host resource could not be released (the VM is stopped anyway).
        """
        async with self._stop_lock:
            resources, self._resources = self._resources, None
            self._stopping, self._stop_grace = True, timeout
            try:
                if resources is not None:
                    if self._qemu is not None:
                        # The VM goes first: a hotplugged virtiofsd (undone before QEMU, last in first out)
                        # took 0.2 s to leave on SIGTERM while QEMU held its connection, none once it is gone.
                        await asyncio.shield(self._shutdown_qemu(self._qemu))
                    await asyncio.shield(resources.aclose())
            except OSError as exc:
                raise HypervisorError(f"stop vm: {exc}") from exc
            finally:
                self._life.move(VmState.STOPPED)
            _log.info("vm stopped", extra=self._fields(status=self._exit_status))

    async def detach(self) -> None:
        """Let the running VM outlive this process: stop watching QEMU and its helpers, hang up QMP, and
        keep every resource (processes, sockets, logs, workdir) for the process that takes it over (it
        goes by the pids, as :class:`kata.sandbox.vmm.AdoptedVm` does). This object can do nothing more.

        Raises:
            StateError: the VM is not running or paused.
        """
        async with self._stop_lock:
            self._life.require("detach")
            self._resources = None  # dropped, not closed: the undo is the new owner's now
            if self._watcher is not None:
                self._watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watcher
            for child in (self._qemu, *self._helpers):
                if child is not None:
                    child.release()
            await self._qmp.close()  # QEMU's monitor takes one client at a time: free it for the new owner
            self._life.move(VmState.DETACHED)
            _log.info("vm detached", extra=self._fields(pids=list(self.pids())))

    async def adopt(self, processes: Sequence[tuple[int, int]], timeout: float = 10.0) -> None:
        """See :class:`kata.hypervisor.base.Adoptable`: take over a running VM that another process started
        from the same prepared shape and handed over (:meth:`detach`), its files now in this VM's workdir.

        Raises:
            StateError: unless prepared.
            HypervisorError: a process is gone, or QMP does not answer within ``timeout`` s (the VM is
                stopped then: it is ours once adopted).
        """
        self._life.require("start")
        if not processes:
            raise HypervisorError("adopt vm: no VMM process")
        spec = self.spec
        with self._until_running("adopt vm", f"QMP did not answer within {timeout:g} s"):
            async with AsyncExitStack() as stack:
                channel = self.agent
                for path in (self.paths.qmp_socket, self.paths.qemu_log,
                             *([Path(channel.socket_path)] if channel.transport == "serial" else [])):
                    stack.callback(_unlink, path)
                stack.push_async_callback(self._qmp.close)
                stack.push_async_callback(self._join_watcher)
                (qemu_pid, qemu_start), *helpers = processes
                for pid, start in helpers:  # virtiofsd leaves by itself once QEMU is gone; SIGTERM if not
                    helper = adopt(pid, start, name="virtiofsd", log_path=Path(f"{self.paths.virtiofsd_socket}.log"),
                                   sandbox_id=self.sandbox_id)
                    self._helpers.append(helper)
                    stack.push_async_callback(helper.terminate, 2.0)
                qemu = adopt(qemu_pid, qemu_start, name="qemu", log_path=self.paths.qemu_log,
                             sandbox_id=self.sandbox_id)
                async with asyncio.timeout(timeout):
                    await self._take_control(stack, spec, qemu)
                self._resources = stack.pop_all()
        _log.info("vm adopted", extra=self._fields(pids=list(self.pids()), machine=spec.machine))

    def clone_identity(self) -> str:
        """See :class:`kata.hypervisor.base.Templatable`: the command line, host paths below the workdir and
        the RAM file made neutral (a clone must match its template's machine, devices, ids and port names;
        only host-side backends may differ).

        Raises:
            StateError: before prepare.
        """
        spec = replace(self.spec, name="vm", memory_backend=MemoryBackend("file", "<memory>", share=True),
                       incoming=False)
        return "\0".join(build_argv(spec)).replace(str(self.paths.workdir), "<workdir>")

    async def save_state(self, path: str, timeout: float = 30.0) -> None:
        """See :class:`kata.hypervisor.base.Templatable`: x-ignore-shared, stop, migrate to ``path``, stop.

        Raises:
            StateError: the VM is not running or paused, or its RAM is not a shared memory image.
            HypervisorError: QEMU refused or did not finish within ``timeout`` s (the VM is stopped anyway).
        """
        if not self._life.live or self._image is None or not self._image.shared:
            raise StateError("vm: only a running VM with a shared memory image can be saved",
                             state=self.state.value, required=("running", "paused"))
        try:
            async with asyncio.timeout(timeout):
                await self._qmp.migrate_set_capability("x-ignore-shared")
                await self._qmp.stop()
                await self._qmp.migrate(f"exec:cat > {shlex.quote(path)}")
                await self._qmp.wait_migration()
        except TimeoutError as exc:
            raise HypervisorError(f"save vm state: not done within {timeout:g} s") from exc
        finally:
            await self.stop()
        _log.info("vm state saved", extra=self._fields(path=path))

    async def wait(self) -> int:
        """See :meth:`Hypervisor.wait`."""
        self._life.require("wait")
        if self._watcher is None:
            raise StateError("vm: never started", state=self.state.value, required=("running",))
        return await asyncio.shield(self._watcher)

    async def pause(self) -> None:
        """See :meth:`Hypervisor.pause` (QMP stop)."""
        self._life.require("pause")
        await self._qmp.stop()
        self._life.move(VmState.PAUSED)

    async def resume(self) -> None:
        """See :meth:`Hypervisor.resume` (QMP cont)."""
        self._life.require("resume")
        await self._qmp.cont()
        self._life.move(VmState.RUNNING)

    async def add_device(self, device: Device) -> None:
        """See :meth:`Hypervisor.add_device`."""
        if self.state is VmState.PREPARED:
            self._check_ids([*self._devices, device])
            self._devices.append(device)
            try:
                build_argv(self.spec)
            except HypervisorError:
                self._devices.pop()
                raise
            return
        self._life.require("hotplug")
        assert self._hot is not None
        await self._hot.add(device)
        _log.info("device hotplugged", extra=self._fields(device=device.id, kind=type(device).__name__))

    async def remove_device(self, device: Device, timeout: float = 10.0) -> None:
        """See :meth:`Hypervisor.remove_device`."""
        if self.state is VmState.PREPARED:
            if device not in self._devices:
                raise HypervisorError(f"remove device {device.id}: not cold-plugged")
            self._devices.remove(device)
            return
        self._life.require("hotplug")
        assert self._hot is not None
        await self._hot.remove(device, timeout)
        _log.info("device unplugged", extra=self._fields(device=device.id))

    async def resize_vcpus(self, count: int) -> int:
        """See :meth:`Hypervisor.resize_vcpus` (q35 only)."""
        self._life.require("resize")
        if self._vcpus is None:
            raise HypervisorError("resize vcpus: microvm has no vCPU hotplug")
        return await self._vcpus.resize(count, timeout=10.0)

    async def resize_memory(self, mib: int) -> int:
        """See :meth:`Hypervisor.resize_memory` (q35 only; grows by pc-dimms in 128 MiB blocks)."""
        self._life.require("resize")
        if self._memory is None:
            raise HypervisorError("resize memory: microvm has no memory hotplug")
        return await self._memory.resize(mib)

    def capabilities(self) -> Capabilities:
        """See :meth:`Hypervisor.capabilities`."""
        q35 = self.config.machine_type == "q35"
        scsi = self.config.block_device_driver == "virtio-scsi"
        return Capabilities(block_hotplug=q35 or scsi, net_hotplug=q35, fs_hotplug=q35, vcpu_hotplug=q35,
                            memory_hotplug=q35, pause=True, shared_fs=frozenset({"virtio-fs", "virtio-9p"}),
                            agent_transports=frozenset({"serial", "vsock"}))

    def pids(self) -> tuple[int, ...]:
        """See :meth:`Hypervisor.pids`."""
        return tuple(c.pid for c in (self._qemu, *self._helpers) if c is not None and c.alive())

    async def check(self) -> None:
        """See :meth:`Hypervisor.check` (QMP query-status)."""
        self._life.require("check")
        if self.state is VmState.EXITED:
            raise HypervisorError(f"vm exited (status {self._exit_status})")
        status = await self._qmp.query_status()
        if status.status not in ("running", "paused"):
            raise HypervisorError(f"vm is {status.status}")


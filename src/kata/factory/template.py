"""VM templates: a guest booted once to a ready agent, saved as a RAM file plus its device state.

Clones map the RAM file copy-on-write and restore the device state (QEMU: x-ignore-shared migration), so
they skip the kernel boot and the agent's start. Everything that makes a template is hashed into its
key: the VMM's command line with host paths made neutral (machine, devices, ids, kernel parameters,
memory, vCPUs) and the identity (inode, size, mtime) of the VMM binary, kernel, initrd and image. A
template whose key differs from the one the current configuration gives is stale: it is rebuilt, never
cloned. Files below ``template_path``::

    memory          guest RAM (read-only once saved: a clone never writes to it)
    state           device state (x-ignore-shared: no RAM in it)
    template.json   key, when and how it was made; written last (no template.json: no template)
    console.log     the template guest's console while it was made
    vm/             working dir of the template VM while it is made

A sibling ``<template_path>.lock`` is flocked: shared while a clone starts (until its VMM has mapped the
RAM file and read the state), exclusive while a template is made or destroyed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kata.agent import AgentClient
from kata.config import Config
from kata.errors import FactoryError, KataError
from kata.hypervisor import SHARED_FS_TAG, Hypervisor, MemoryImage, SharedFs, Templatable, new_hypervisor
from kata.hypervisor.accel import choose_accelerator
from kata.hypervisor.devices import Device
from kata.log import fields

__all__ = [
    "TEMPLATE_FORMAT",
    "Template",
    "TemplateInfo",
    "TemplatePaths",
    "TemplateStatus",
    "key_files",
    "prepared_vm",
    "template_devices",
    "template_key",
]

_log = logging.getLogger("kata.factory")
TEMPLATE_FORMAT = 1  # bump when what a template holds changes: older templates become stale
# The agent must see the host hang up before the snapshot: otherwise every clone's agent still expects
# the template session's stream ids from the clone's first host connection.
HANGUP_PAUSE = 0.3
BUILD_TIMEOUT = 120.0  # boot to a ready agent under TCG takes 6-10 s; a busy host can take much longer
SAVE_TIMEOUT = 30.0


@dataclass(frozen=True)
class TemplatePaths:
    """The files of the template kept at ``root`` (``[factory] template_path``)."""

    root: Path

    @property
    def memory(self) -> Path:
        """Guest RAM."""
        return self.root / "memory"

    @property
    def state(self) -> Path:
        """Device state (x-ignore-shared migration stream)."""
        return self.root / "state"

    @property
    def info(self) -> Path:
        """template.json: the template exists once this does."""
        return self.root / "template.json"

    @property
    def console_log(self) -> Path:
        """The template guest's console while it was made."""
        return self.root / "console.log"

    @property
    def workdir(self) -> Path:
        """The template VM's working dir while it is made."""
        return self.root / "vm"

    @property
    def lock(self) -> Path:
        """The flock file, beside ``root`` so that destroying the template does not race with it."""
        return self.root.with_name(f"{self.root.name}.lock")


@dataclass(frozen=True)
class TemplateInfo:
    """template.json: what the template is and how long it took to make."""

    key: str
    created: float
    boot_seconds: float
    memory_mib: int
    state_bytes: int
    shared_fs: str
    kernel: str
    hypervisor: str = "qemu"

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object."""
        return {"version": TEMPLATE_FORMAT, "key": self.key, "created": self.created,
                "boot_seconds": self.boot_seconds, "memory_mib": self.memory_mib, "state_bytes": self.state_bytes,
                "shared_fs": self.shared_fs, "kernel": self.kernel, "hypervisor": self.hypervisor}

    @classmethod
    def from_json(cls, data: Any) -> TemplateInfo:
        """The record of a parsed template.json.

        Raises:
            KeyError, TypeError, ValueError: a field is missing or wrong.
        """
        return cls(key=str(data["key"]), created=float(data["created"]), boot_seconds=float(data["boot_seconds"]),
                   memory_mib=int(data["memory_mib"]), state_bytes=int(data["state_bytes"]),
                   shared_fs=str(data["shared_fs"]), kernel=str(data["kernel"]),
                   hypervisor=str(data.get("hypervisor", "qemu")))


@dataclass(frozen=True)
class TemplateStatus:
    """A template as the current configuration sees it: ``info`` None when there is none."""

    paths: TemplatePaths
    key: str
    info: TemplateInfo | None

    @property
    def fresh(self) -> bool:
        """Whether the template exists and was made from what the configuration names now."""
        return self.info is not None and self.info.key == self.key


def _file_identity(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}:missing"
    return f"{path}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def template_key(identity: str, files: Sequence[str]) -> str:
    """The key of a template: its VMM's :meth:`~kata.hypervisor.Templatable.clone_identity` and the
    identity (device, inode, size, mtime) of each of ``files`` (a rebuilt kernel is a new file)."""
    digest = hashlib.sha256(f"pykata-template-{TEMPLATE_FORMAT}\0{identity}".encode())
    for path in files:
        digest.update(f"\0{_file_identity(path)}".encode())
    return digest.hexdigest()[:32]


def key_files(config: Config) -> tuple[str, ...]:
    """The files whose change makes a template stale: VMM binary, kernel, initrd, image."""
    hypervisor = config.hypervisor
    return tuple(p for p in (hypervisor.path, hypervisor.kernel, hypervisor.initrd, hypervisor.image) if p)


def template_devices(config: Config, workdir: Path) -> list[Device]:
    """The devices a template (and so every clone) is started with, besides console and agent channel.

    A 9p share can be in the template: its host directory is a command-line backend, not migrated state,
    so each clone points it at its own ``<workdir>/shared``. virtio-fs cannot (vhost-user-fs blocks
    migration): clones get it hotplugged. NICs are hotplugged too (their MAC is in the device state).
    """
    if config.hypervisor.shared_fs == "virtio-9p":
        return [SharedFs(SHARED_FS_TAG, str(workdir / "shared"), "virtio-9p")]
    return []


async def prepared_vm(config: Config, workdir: Path, *, sandbox_id: str = "") -> Templatable:
    """A prepared (not started) VM with the template's devices, from a driver that can make templates.

    Raises:
        FactoryError: the configured hypervisor cannot make templates.
        ConfigError, AcceleratorError, HypervisorError: the VM cannot be prepared.
    """
    accelerator = (await asyncio.to_thread(choose_accelerator, config.hypervisor)).accelerator
    vm = new_hypervisor(config.hypervisor_name, config.hypervisor, workdir, sandbox_id=sandbox_id,
                        accelerator=accelerator)
    if not isinstance(vm, Templatable):
        raise FactoryError(f"hypervisor {config.hypervisor_name} cannot make VM templates")
    await vm.prepare(template_devices(config, workdir))
    return vm


def _hypervisor(vm: Templatable) -> Hypervisor:
    assert isinstance(vm, Hypervisor)
    return vm


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


async def _warm_up(agent: AgentClient) -> None:
    """Calls every clone makes (and the loading they trigger in the guest), done once in the template."""
    await agent.get_guest_details()  # waits until the agent's services are loaded
    await agent.set_guest_date_time(time.time())
    await agent.reseed_random_dev(os.urandom(64))
    await agent.list_interfaces()
    await agent.list_routes()


class Template:
    """The VM template of a configuration (``[factory] template_path``)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.paths = TemplatePaths(Path(config.factory.template_path).absolute())

    def _fields(self, **extra: object) -> dict[str, dict[str, object]]:
        return fields(template=str(self.paths.root), **extra)

    def read_info(self) -> TemplateInfo | None:
        """template.json, or None when there is no (complete) template."""
        try:
            return TemplateInfo.from_json(json.loads(self.paths.info.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, KeyError, TypeError, ValueError) as exc:
            _log.warning("template.json unreadable (%s): treated as no template", exc, extra=self._fields())
            return None

    async def current_key(self) -> str:
        """The key a template made now from the configuration would have (nothing is started).

        Raises:
            FactoryError: the hypervisor cannot make templates.
            HypervisorError, ConfigError: the configuration does not give a VM.
        """
        vm = await prepared_vm(self.config, self.paths.workdir)
        return template_key(vm.clone_identity(), key_files(self.config))

    async def status(self) -> TemplateStatus:
        """The template (if any) and whether it is fresh.

        Raises:
            FactoryError, HypervisorError, ConfigError: as :meth:`current_key`.
        """
        return TemplateStatus(self.paths, await self.current_key(), self.read_info())

    @contextlib.asynccontextmanager
    async def _locked(self, mode: int) -> AsyncIterator[None]:
        self.paths.root.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, fd, mode)
            yield
        finally:
            os.close(fd)

    @contextlib.asynccontextmanager
    async def use(self, key: str) -> AsyncIterator[TemplateInfo]:
        """The template with ``key``, made first when missing or stale; held (shared lock) for the block,
        in which a clone's VMM must map the RAM file and read the state.

        Raises:
            FactoryError: the template could not be made.
        """
        async with self._locked(fcntl.LOCK_SH):
            info = self.read_info()
            if info is not None and info.key == key:
                yield info
                return
        async with self._locked(fcntl.LOCK_EX):
            info = self.read_info()
            if info is None or info.key != key:  # nobody made it while we waited for the lock
                info = await self._build()
            # Holding the exclusive lock through the clone's start is simpler than a downgrade race.
            yield info

    async def build(self) -> TemplateInfo:
        """Make the template anew (whatever is there is removed first).

        Raises:
            FactoryError: the template VM did not start, its agent did not answer, or saving failed.
        """
        async with self._locked(fcntl.LOCK_EX):
            return await self._build()

    async def ensure(self) -> tuple[TemplateInfo, bool]:
        """The template, made when missing or stale; and whether it was made now.

        Raises:
            FactoryError, HypervisorError, ConfigError: as :meth:`build` and :meth:`current_key`.
        """
        key = await self.current_key()
        async with self._locked(fcntl.LOCK_EX):
            info = self.read_info()
            if info is not None and info.key == key:
                return info, False
            return await self._build(), True

    async def destroy(self) -> bool:
        """Remove the template (clones running now keep their memory); whether there was one."""
        async with self._locked(fcntl.LOCK_EX):
            existed = self.paths.root.exists()
            self._remove()
        with contextlib.suppress(FileNotFoundError):
            self.paths.lock.unlink()
        return existed

    def _remove(self) -> None:
        # template.json first: a half-removed template is no template. Running clones keep the RAM
        # file's pages (unlinking does not change the inode they mapped).
        for path in (self.paths.info, self.paths.memory, self.paths.state):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        shutil.rmtree(self.paths.root, ignore_errors=True)

    async def _build(self) -> TemplateInfo:
        self._remove()
        workdir = self.paths.workdir
        try:
            (workdir / "shared").mkdir(parents=True, mode=0o750)
            info = await self._boot_and_save(workdir)
            _write_json(self.paths.info, info.to_json())
        except KataError as exc:
            self._remove()
            raise FactoryError(f"make template {self.paths.root}: {exc}") from exc
        except BaseException:
            self._remove()
            raise
        finally:
            with contextlib.suppress(OSError):
                shutil.copyfile(workdir / "console.log", self.paths.console_log)
            shutil.rmtree(workdir, ignore_errors=True)
        _log.info("template made", extra=self._fields(key=info.key, boot_seconds=info.boot_seconds))
        return info

    async def _boot_and_save(self, workdir: Path) -> TemplateInfo:
        vm = await prepared_vm(self.config, workdir)
        key = template_key(vm.clone_identity(), key_files(self.config))
        vm.use_memory_image(MemoryImage(str(self.paths.memory), shared=True))
        hypervisor = _hypervisor(vm)
        started = time.monotonic()
        try:
            await hypervisor.start(timeout=BUILD_TIMEOUT)
            dial = float(max(self.config.agent.dial_timeout, BUILD_TIMEOUT))
            agent = await AgentClient.connect(hypervisor.agent.address, timeout=dial)
            try:
                await agent.wait_ready(dial)
                boot = time.monotonic() - started
                await _warm_up(agent)
            finally:
                await agent.close()
            await asyncio.sleep(HANGUP_PAUSE)
            await vm.save_state(str(self.paths.state), timeout=SAVE_TIMEOUT)
        finally:
            await hypervisor.stop()
        for path in (self.paths.memory, self.paths.state):
            path.chmod(0o400)  # never written again: clones map it privately (root ignores the mode)
        return TemplateInfo(key=key, created=time.time(), boot_seconds=round(boot, 3),
                            memory_mib=self.config.hypervisor.default_memory,
                            state_bytes=self.paths.state.stat().st_size,
                            shared_fs=self.config.hypervisor.shared_fs, kernel=self.config.hypervisor.kernel,
                            hypervisor=self.config.hypervisor_name)

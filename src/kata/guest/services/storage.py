"""Mount the storages the host names (virtio-fs, 9p, block, ephemeral, local, bind) and undo them."""

from __future__ import annotations

import os
import threading
import time

from kata.guest.runtime import syscalls
from kata.guest.runtime.mountopts import FLAGS
from kata.guest.services.guest_ops import resolve_inside
from kata.ttrpc.status import InvalidArgumentError, NotFoundError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection
    from typing import Protocol

    from kata.guest.log import GuestLog
    from kata.protocols.pb.agent_pb2 import Storage

    class WaitModules(Protocol):
        """kata.guest.modules.ModuleLoader.wait: until ``modules`` (default: all) are loaded."""

        def __call__(self, timeout: float, modules: Collection[str] = ...) -> bool: ...

__all__ = ["DRIVER_MODULES", "GUEST_ROOT", "StorageManager", "mount_flags"]

GUEST_ROOT = "/run/kata-containers"
BLOCK_WAIT = 10.0
NINEP_OPTIONS = "trans=virtio,version=9p2000.L,cache=mmap,msize=512000"
# The kernel modules a storage driver needs (dependencies load first); a block storage's filesystem
# module is added. Drivers not listed need none.
DRIVER_MODULES: dict[str, tuple[str, ...]] = {
    "virtio-fs": ("virtiofs",),
    "9p": ("9pnet_virtio", "9p"),
    "blk": ("virtio_blk",),
    "virtio-blk": ("virtio_blk",),
    "scsi": ("virtio_scsi",),
}


def mount_flags(options: list[str]) -> tuple[int, str]:
    """MS_* flags and the fs-specific data string of a mount option list."""
    flags, data = 0, []
    for option in options:
        known = FLAGS.get(option)
        if known is None:
            data.append(option)
        elif known[0]:
            flags &= ~known[1]
        else:
            flags |= known[1]
    return flags, ",".join(data)


class StorageManager:
    """Mounts storages below ``allowed_root`` and remembers which owner (sandbox "" or a container)
    brought each, so removing a container undoes exactly its own mounts."""

    def __init__(self, log: GuestLog, *, allowed_root: str = GUEST_ROOT,
                 wait_modules: WaitModules | None = None) -> None:
        self.log = log
        self.allowed_root = os.path.realpath(allowed_root)
        self.wait_modules = wait_modules
        self._mounted: list[tuple[str, str]] = []  # (owner, mount point), in mount order
        self._lock = threading.Lock()

    def mount_all(self, storages: list[Storage], *, owner: str) -> None:
        """Mount each storage, undoing the ones already mounted if one fails.

        Raises:
            InvalidArgumentError: for an unknown driver or a mount point outside the allowed root.
            NotFoundError: when a block device does not appear.
            OSError: when mount(2) fails (its message names source and target).
        """
        done = 0
        try:
            for storage in storages:
                self._mount_one(storage, owner)
                done += 1
        except BaseException:
            with self._lock:
                mine = [entry for entry in self._mounted if entry[0] == owner][-done:] if done else []
            for entry in reversed(mine):
                self._unmount(entry)
            raise

    def _mount_one(self, storage: Storage, owner: str) -> None:
        target = resolve_inside(storage.mount_point, self.allowed_root, "storage mount point")
        os.makedirs(target, exist_ok=True)
        driver = storage.driver
        if self.wait_modules is not None:
            self.wait_modules(BLOCK_WAIT, self.modules_for(storage))
        flags, data = mount_flags(list(storage.options))
        if driver == "virtio-fs":
            syscalls.mount(storage.source, target, "virtiofs", flags, data)
        elif driver == "9p":
            syscalls.mount(storage.source, target, "9p", flags, ",".join(x for x in (NINEP_OPTIONS, data) if x))
        elif driver in ("blk", "virtio-blk", "scsi"):
            syscalls.mount(self._block_device(storage.source), target, storage.fstype or "ext4", flags, data)
        elif driver == "ephemeral":
            syscalls.mount("tmpfs", target, "tmpfs", flags, data)
        elif driver == "bind":
            syscalls.mount(storage.source, target, None, flags | syscalls.MS_BIND | syscalls.MS_REC, "")
        elif driver == "local":
            os.chmod(target, 0o777 if "mode=0777" in storage.options else 0o755)
            return  # a directory, nothing mounted
        else:
            raise InvalidArgumentError(f"storage driver {driver!r} is not supported")
        with self._lock:
            self._mounted.append((owner, target))
        self.log.info("storage mounted", driver=driver, source=storage.source, target=target)

    @staticmethod
    def modules_for(storage: Storage) -> tuple[str, ...]:
        """The kernel modules mounting ``storage`` needs (the loader may still be busy with others)."""
        modules = DRIVER_MODULES.get(storage.driver, ())
        if modules and storage.driver not in ("virtio-fs", "9p") and storage.fstype:
            modules += (storage.fstype,)
        return modules

    def _block_device(self, source: str) -> str:
        """A /dev path as given, waiting for it to appear (hotplug takes a moment)."""
        if not source.startswith("/dev/"):
            raise InvalidArgumentError(f"block storage source {source!r}: expected a /dev path")
        deadline = time.monotonic() + BLOCK_WAIT
        while not os.path.exists(source):
            if time.monotonic() > deadline:
                raise NotFoundError(f"block device {source} did not appear within {BLOCK_WAIT:.0f} s")
            time.sleep(0.01)
        return source

    def _unmount(self, entry: tuple[str, str]) -> None:
        try:
            syscalls.umount2(entry[1], syscalls.MNT_DETACH)
        except OSError as exc:
            self.log.warning("unmount failed", target=entry[1], error=exc)
        with self._lock:
            if entry in self._mounted:
                self._mounted.remove(entry)

    def unmount_owner(self, owner: str) -> None:
        """Unmount what ``owner`` mounted, newest first (errors are logged, not raised)."""
        with self._lock:
            mine = [entry for entry in self._mounted if entry[0] == owner]
        for entry in reversed(mine):
            self._unmount(entry)

    def unmount_all(self) -> None:
        """Unmount everything, newest first."""
        with self._lock:
            everything = list(self._mounted)
        for entry in reversed(everything):
            self._unmount(entry)

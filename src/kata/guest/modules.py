"""Load the image's kernel modules in a child process, so the agent channel opens while the rest load.

The guest usually has one vCPU: the loader would take it from PID 1 while PID 1 answers its first
call. So once the channel's driver is in, the loader lowers its priority (nice 19) and loads the
rest in PID 1's idle time; code that needs those drivers waits for it (:meth:`ModuleLoader.wait`),
which leaves the CPU to it.
"""

from __future__ import annotations

import os
import threading
import time

from kata.guest import linux

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection

    from kata.guest.log import GuestLog
    from kata.guest.reaper import Reaper

__all__ = ["BACKGROUND_NICE", "MODULE_LIST", "ModuleLoader", "load_modules", "module_name", "read_module_list"]

# Written by the image builder: module files in load order (the agent channel's come first).
MODULE_LIST = "/etc/kata-agent/modules"
# /sys/module/<name>/initstate reads "live" once a module has loaded and initialised.
SYS_MODULE = "/sys/module"
POLL_INTERVAL = 0.005
BACKGROUND_NICE = 19


def read_module_list(path: str = MODULE_LIST) -> list[str]:
    """The module paths listed in ``path`` (comments and blank lines skipped).

    Raises:
        OSError: when the list cannot be read.
    """
    with open(path) as fh:
        return [line.strip() for line in fh if line.strip() and not line.startswith("#")]


def module_name(path: str) -> str:
    """The kernel's name of a module file: ``.../virtio_console.ko`` -> ``virtio_console``."""
    return path.rpartition("/")[2].partition(".")[0].replace("-", "_")


def load_modules(modules: list[str], log: GuestLog, *, urgent: Collection[str] = ()) -> int:
    """Load ``modules`` in order; failures are logged and skipped. Returns the number that failed.

    Once every module named in ``urgent`` is in, the rest load at nice :data:`BACKGROUND_NICE`
    (never, if one of them is not listed).
    """
    failed = 0
    waiting = set(urgent)
    background = bool(waiting) and waiting <= {module_name(module) for module in modules}
    for module in modules:
        started = time.monotonic()
        try:
            linux.load_module(module)
        except OSError as exc:
            log.error("module load failed", module=module, error=exc)
            failed += 1
            continue
        log.debug("module loaded", module=module.rpartition("/")[2],
                  ms=round((time.monotonic() - started) * 1000, 1))
        waiting.discard(module_name(module))
        if background and not waiting:
            os.nice(BACKGROUND_NICE)
            background = False
    return failed


class ModuleLoader:
    """Loads the module list in a forked child; :meth:`wait` tells when it is done.

    Devices show up as their drivers load, so the agent can look for its channel (listed first)
    while the loader goes on with block, network and filesystem drivers. Code that needs those
    (hotplug, mounts) calls :meth:`wait` first.
    """

    def __init__(self, log: GuestLog, reaper: Reaper, *, sys_module: str = SYS_MODULE) -> None:
        self._log = log
        self._reaper = reaper
        self._sys_module = sys_module
        self._listed: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        self._waiters = 0
        self._background = False  # whether the loader lowers its priority (see load_modules)
        self.pid = 0
        self.exit_code: int | None = None

    def start(self, path: str = MODULE_LIST, *, urgent: Collection[str] = (), skip: Collection[str] = ()) -> None:
        """Fork the loader (nothing happens when the list is missing, as in a bare image).

        ``urgent``: the modules the agent channel needs; the ones listed after them load at low priority.
        ``skip``: modules this VM never needs (not loaded; waiting for one returns at once).
        """
        try:
            modules = [module for module in read_module_list(path) if module_name(module) not in skip]
        except OSError as exc:
            self._log.warning("no module list", path=path, error=exc)
            self.exit_code = 0
            return
        self._listed = frozenset(module_name(module) for module in modules)
        self._background = bool(urgent) and set(urgent) <= self._listed
        pid = os.fork()
        if pid == 0:  # the child: load, report, and leave without running Python's clean-up
            code = 1
            try:
                started = time.monotonic()
                failed = load_modules(modules, self._log, urgent=urgent)
                self._log.info("kernel modules loaded", count=len(modules) - failed, failed=failed,
                               ms=round((time.monotonic() - started) * 1000, 1))
                code = 1 if failed else 0
            finally:
                os._exit(code)
        self.pid = pid
        self._reaper.watch(pid, self._finished)

    def _finished(self, pid: int, code: int) -> None:
        del pid
        self.exit_code = code

    @property
    def done(self) -> bool:
        return self.exit_code is not None

    def wait(self, timeout: float, modules: Collection[str] = ()) -> bool:
        """Wait up to ``timeout`` seconds for the loader, or only until ``modules`` are loaded.

        True when the loader has finished or every module named is live (modules the list does
        not hold, built into the kernel or missing from it, need no wait). Someone needs drivers
        now: a loader gone to the background gets its priority back while anyone waits.
        """
        pending = [name for name in modules if name in self._listed]
        if modules and not pending:
            return True
        self._prioritize(+1)
        try:
            deadline = time.monotonic() + timeout
            while not self.done:
                if pending and all(self._live(name) for name in pending):
                    return True
                if time.monotonic() >= deadline:
                    return False
                time.sleep(POLL_INTERVAL)
            return True
        finally:
            self._prioritize(-1)

    def _prioritize(self, change: int) -> None:
        """Count waiters; the loader runs at nice 0 while there is one, in the background after."""
        with self._lock:
            self._waiters += change
            nice = 0 if self._waiters else BACKGROUND_NICE
            if self.done or not self.pid or (change > 0 and self._waiters > 1) or not self._background:
                return
            try:  # noqa: SIM105 - contextlib is one more import paid at every boot
                os.setpriority(os.PRIO_PROCESS, self.pid, nice)
            except OSError:
                pass  # it has just exited

    def _live(self, name: str) -> bool:
        try:
            with open(f"{self._sys_module}/{name}/initstate", "rb") as fh:
                return fh.read().strip() == b"live"
        except OSError:
            return False

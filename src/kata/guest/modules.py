"""Load the image's kernel modules in a child process, so the agent channel opens while the rest load."""

from __future__ import annotations

import os
import time

from kata.guest import linux

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kata.guest.log import GuestLog
    from kata.guest.reaper import Reaper

__all__ = ["MODULE_LIST", "ModuleLoader", "load_modules", "read_module_list"]

# Written by the image builder: module files in load order (the agent channel's come first).
MODULE_LIST = "/etc/kata-agent/modules"
POLL_INTERVAL = 0.005


def read_module_list(path: str = MODULE_LIST) -> list[str]:
    """The module paths listed in ``path`` (comments and blank lines skipped).

    Raises:
        OSError: when the list cannot be read.
    """
    with open(path) as fh:
        return [line.strip() for line in fh if line.strip() and not line.startswith("#")]


def load_modules(modules: list[str], log: GuestLog) -> int:
    """Load ``modules`` in order; failures are logged and skipped. Returns the number that failed."""
    failed = 0
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
    return failed


class ModuleLoader:
    """Loads the module list in a forked child; :meth:`wait` tells when it is done.

    Devices show up as their drivers load, so the agent can look for its channel (listed first)
    while the loader goes on with block, network and filesystem drivers. Code that needs those
    (hotplug, mounts) calls :meth:`wait` first.
    """

    def __init__(self, log: GuestLog, reaper: Reaper) -> None:
        self._log = log
        self._reaper = reaper
        self.pid = 0
        self.exit_code: int | None = None

    def start(self, path: str = MODULE_LIST) -> None:
        """Fork the loader (nothing happens when the list is missing, as in a bare image)."""
        try:
            modules = read_module_list(path)
        except OSError as exc:
            self._log.warning("no module list", path=path, error=exc)
            self.exit_code = 0
            return
        pid = os.fork()
        if pid == 0:  # the child: load, report, and leave without running Python's clean-up
            code = 1
            try:
                started = time.monotonic()
                failed = load_modules(modules, self._log)
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

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the loader; True when it has finished."""
        deadline = time.monotonic() + timeout
        while not self.done and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
        return self.done

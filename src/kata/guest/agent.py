"""What init hands the agent's server (kata.guest.server.serve): options, log, reaper, module loader.

Contract of ``serve(channel, context)``: serve until the host asks the VM to stop (DestroySandbox),
then return (init powers the machine off); raise only for a broken channel; get child exit codes from
``context.reaper`` (never waitpid); call ``context.modules.wait()`` before using a device or filesystem
whose driver is a module; import nothing slow at module level.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kata.guest.cmdline import GuestOptions
    from kata.guest.log import GuestLog
    from kata.guest.modules import ModuleLoader
    from kata.guest.reaper import Reaper

__all__ = ["GuestContext"]


class GuestContext:
    """What init hands the agent: command-line options, console log, child reaper, module loader."""

    __slots__ = ("log", "modules", "options", "reaper")

    def __init__(self, options: GuestOptions, log: GuestLog, reaper: Reaper, modules: ModuleLoader) -> None:
        self.options = options
        self.log = log
        self.reaper = reaper
        self.modules = modules

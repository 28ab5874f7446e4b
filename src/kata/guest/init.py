"""PID 1 of the guest: mount the basics, load kernel modules, open the agent channel, serve, power off.

Started by /init (a three-line script the image builder writes) as
``python3.11 -I -S`` with the agent's library directory on sys.path. Every import is paid at each
boot, slowly under TCG: this module imports only what mounting, module loading and the channel need;
the ttRPC server comes once the module loader runs (kata.guest.server), the rest of the agent later
(kata.guest.loading).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time

from kata.guest import codecache, lazy, linux
from kata.guest.agent import GuestContext
from kata.guest.channel import channel_modules, open_channel, unneeded_modules
from kata.guest.cmdline import parse_cmdline
from kata.guest.log import GuestLog
from kata.guest.modules import ModuleLoader
from kata.guest.reaper import Reaper

__all__ = ["IMAGE_INFO", "MOUNTS", "main"]

# Written by the image builder: facts about the image (key=value lines).
IMAGE_INFO = "/etc/kata-agent/image"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NOSUID_NODEV = linux.MS_NOSUID | linux.MS_NODEV
# (source, target, fstype, flags, data), in mount order.
MOUNTS = (
    ("proc", "/proc", "proc", _NOSUID_NODEV | linux.MS_NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", _NOSUID_NODEV | linux.MS_NOEXEC, ""),
    ("devtmpfs", "/dev", "devtmpfs", linux.MS_NOSUID, "mode=0755"),
    ("devpts", "/dev/pts", "devpts", linux.MS_NOSUID | linux.MS_NOEXEC, "ptmxmode=0666,mode=0620,gid=5"),
    ("shm", "/dev/shm", "tmpfs", _NOSUID_NODEV, "mode=1777"),
    ("tmpfs", "/run", "tmpfs", _NOSUID_NODEV, "mode=0755"),
    # favordynmods (Linux 6.0+): moving a process into a cgroup (every container start and exec)
    # skips an RCU grace period, for slightly dearer forks and exits. Without it: nsdelegate alone.
    ("cgroup2", "/sys/fs/cgroup", "cgroup2", _NOSUID_NODEV | linux.MS_NOEXEC, "nsdelegate,favordynmods"),
)
# Mount options a kernel may not know: retried without (EINVAL) rather than leaving nothing mounted.
OPTIONAL_MOUNT_OPTIONS = (",favordynmods",)
DEV_LINKS = (("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"),
             ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr"))


def mount_filesystems(log: GuestLog) -> None:
    """Mount /proc, /sys, /dev (devtmpfs), /dev/pts, /dev/shm, /run and the cgroup2 hierarchy."""
    for source, target, fstype, flags, data in MOUNTS:
        try:
            os.makedirs(target, exist_ok=True)
            _mount(source, target, fstype, flags, data)
        except OSError as exc:
            log.error("mount failed", target=target, error=exc)
    for target, link in DEV_LINKS:
        try:  # noqa: SIM105 - contextlib is one more import paid at every boot
            os.symlink(target, link)
        except OSError:
            pass  # devtmpfs may already have it


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    try:
        linux.mount(source, target, fstype, flags, data)
    except OSError as exc:
        optional = [option for option in OPTIONAL_MOUNT_OPTIONS if option in data]
        if exc.errno != errno.EINVAL or not optional:
            raise
        for option in optional:
            data = data.replace(option, "")
        linux.mount(source, target, fstype, flags, data)


def attach_console() -> None:
    """Give PID 1 the console as stdio when the kernel found no /dev/console to open for it."""
    try:
        os.fstat(2)
    except OSError:
        fd = os.open("/dev/console", os.O_RDWR | os.O_NOCTTY)
        for target in (0, 1, 2):
            if fd != target:
                os.dup2(fd, target)


def read_image_info(path: str = IMAGE_INFO) -> dict[str, str]:
    """The builder's key=value facts about this image (empty when the file is missing)."""
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return {}
    return dict(line.partition("=")[::2] for line in lines if "=" in line)


def shut_down(log: GuestLog) -> None:
    """Kill every other process, sync and power off."""
    try:  # noqa: SIM105 - contextlib is one more import paid at every boot
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass  # no other process
    log.info("powering off", uptime=round(time.monotonic(), 3))
    try:
        linux.power_off()
    except OSError as exc:
        log.error("power off failed", error=exc)


def boot(log: GuestLog) -> None:
    """Everything PID 1 does before and while the agent serves."""
    started = time.monotonic()
    mount_filesystems(log)
    attach_console()
    os.environ["PATH"] = PATH
    with open("/proc/cmdline") as fh:
        options = parse_cmdline(fh.read())
    log.set_level(options.log_level)
    for problem in options.problems:
        log.warning("bad kernel command line parameter", problem=problem)
    info = read_image_info()
    log.info("kata guest init", kernel=os.uname().release, python=sys.version.split()[0],
             image=info.get("key", "unknown"), mounts_ms=round((time.monotonic() - started) * 1000, 1))
    reaper = Reaper()
    reaper.install()
    modules = ModuleLoader(log, reaper)
    urgent = channel_modules(options.channel_kind)
    modules.start(urgent=urgent, skip=unneeded_modules(options.channel_kind, transport=urgent[1]))
    # Imported while the channel's drivers load (the device also waits for QEMU meanwhile).
    lazy.defer(*lazy.UNUSED_IN_GUEST)
    codecache.install(("collections",))
    from kata.guest.server import serve

    channel = open_channel(options)
    log.info("agent channel open", channel=channel.address, uptime=round(time.monotonic(), 3))
    serve(channel, GuestContext(options, log, reaper, modules))


def main() -> int:
    """Run PID 1; never returns normally in the guest (the machine powers off)."""
    log = GuestLog()
    try:
        boot(log)
    except BaseException as exc:  # PID 1 must never die with an exception: that panics the kernel
        log.error("agent failed", error=f"{type(exc).__name__}: {exc}")
    shut_down(log)
    return 1

"""The guest's root tree: base layout, busybox, shared libraries, kernel modules, /init."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from kata.errors import ImageError
from kata.image.elf import resolve_libraries
from kata.image.modules import ModuleResolution
from kata.image.python_runtime import AGENT_LIB_DIR, GUEST_PYTHON

__all__ = [
    "BUSYBOX",
    "BUSYBOX_APPLETS",
    "IMAGE_INFO",
    "INIT_SCRIPT",
    "MODULE_LIST",
    "stage_base",
    "stage_busybox",
    "stage_libraries",
    "stage_modules",
    "write_image_info",
]

BUSYBOX = Path("/bin/busybox")
# What the agent and a person on the debug console use; checked against `busybox --list`.
BUSYBOX_APPLETS = (
    "[", "ash", "cat", "chmod", "chown", "chroot", "cp", "cut", "date", "df", "dmesg", "du", "echo", "env",
    "false", "find", "free", "grep", "halt", "head", "hostname", "id", "ifconfig", "insmod", "ip", "kill",
    "less", "ln", "losetup", "ls", "lsmod", "mkdir", "mknod", "mount", "mv", "nsenter", "pivot_root",
    "poweroff", "printf", "ps", "readlink", "reboot", "rm", "rmdir", "rmmod", "route", "sed", "setsid",
    "sh", "sleep", "stat", "switch_root", "sync", "tail", "test", "top", "touch", "tr", "true", "umount",
    "uname", "unshare", "uptime", "vi", "wc", "xargs",
)
# usrmerge, as on the Debian host the files come from.
MERGED_DIRS = ("bin", "sbin", "lib", "lib64")
EMPTY_DIRS = ("proc", "sys", "dev", "run", "tmp", "mnt", "root", "etc/kata-agent")
MULTIARCH_LIBS = "usr/lib/x86_64-linux-gnu"
IMAGE_INFO = "etc/kata-agent/image"
MODULE_LIST = "etc/kata-agent/modules"
# The kernel runs /init through its #! line: one argument is all it passes, so the flags are joined.
INIT_SCRIPT = f"""#!{GUEST_PYTHON} -IS
import sys
sys.path.insert(0, "{AGENT_LIB_DIR}")
from kata.guest.init import main
sys.exit(main())
"""
FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\ntty:x:5:\n",
    "etc/hostname": "kata\n",
}


def stage_base(root: Path) -> None:
    """Directories, usrmerge links, /etc basics and /init."""
    for name in MERGED_DIRS:
        (root / "usr" / name).mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(f"usr/{name}")
    for name in EMPTY_DIRS:
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "root").chmod(0o700)
    for name, text in FILES.items():
        (root / name).write_text(text)
    init = root / "init"
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)


def stage_busybox(root: Path, busybox: Path = BUSYBOX, applets: Iterable[str] = BUSYBOX_APPLETS) -> int:
    """busybox-static as /usr/bin/busybox with its applet links; returns the number of links.

    Raises:
        ImageError: when busybox is missing, not static, or lacks an applet.
    """
    try:
        listing = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ImageError(f"{busybox}: cannot list applets (apt-get install busybox-static): {exc}") from exc
    wanted = sorted(set(applets))
    missing = sorted(set(wanted) - set(listing.split()))
    if missing:
        raise ImageError(f"{busybox} lacks applets: {', '.join(missing)}")
    bin_dir = root / "usr" / "bin"
    shutil.copyfile(busybox, bin_dir / "busybox")
    (bin_dir / "busybox").chmod(0o755)
    for applet in wanted:
        (bin_dir / applet).symlink_to("busybox")
    return len(wanted)


def stage_libraries(root: Path, binaries: Iterable[Path]) -> list[str]:
    """Copy the shared libraries (and loader) the binaries need; returns their sonames.

    Libraries go to /usr/lib/x86_64-linux-gnu, the loader to its PT_INTERP path (a link to the
    library directory when the same file is also needed by soname).

    Raises:
        ImageError: when a library is missing on the host.
    """
    found = resolve_libraries(binaries)
    lib_dir = root / MULTIARCH_LIBS
    lib_dir.mkdir(parents=True, exist_ok=True)
    for name, path in sorted(found.items()):
        if name.startswith("/"):
            continue
        shutil.copyfile(path, lib_dir / name)
        (lib_dir / name).chmod(0o755)
    for name in (n for n in found if n.startswith("/")):
        # Resolved: the loader's directory is usually a usrmerge link (/lib64 -> usr/lib64).
        parent = (root / name.lstrip("/")).parent.resolve()
        parent.mkdir(parents=True, exist_ok=True)
        target = parent / Path(name).name
        base = Path(name).name
        if base in found:
            target.symlink_to(os.path.relpath(lib_dir.resolve() / base, parent))
        else:
            shutil.copyfile(found[name], target)
            target.chmod(0o755)
    return sorted(found)


def stage_modules(root: Path, modules_dir: Path, release: str, resolution: ModuleResolution) -> list[str]:
    """Copy the modules to load into /usr/lib/modules/<release> and write the load list; returns it."""
    guest_dir = Path("/usr/lib/modules") / release
    order = []
    for rel in resolution.load_order:
        target = root / guest_dir.relative_to("/") / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(modules_dir / rel, target)
        order.append(str(guest_dir / rel))
    header = "# kernel modules PID 1 loads, in order (written by the image builder)\n"
    (root / MODULE_LIST).write_text(header + "".join(f"{path}\n" for path in order))
    return order


def write_image_info(root: Path, facts: Mapping[str, str]) -> None:
    """Facts PID 1 logs at boot (image key, kernel), as key=value lines."""
    (root / IMAGE_INFO).write_text("".join(f"{key}={value}\n" for key, value in sorted(facts.items())))

"""Build the container's filesystem view in its mount namespace (runs in the forked init, runc's way)."""

from __future__ import annotations

import errno
import os
import stat

from kata.guest.runtime import syscalls as sc
from kata.guest.runtime.errors import PathEscapeError
from kata.guest.runtime.plan import DeviceNode
from kata.guest.runtime.securejoin import secure_join

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kata.guest.runtime.mountopts import MountStep
    from kata.guest.runtime.plan import RootfsPlan

__all__ = ["finish_rootfs", "mount_point_of", "prepare_rootfs", "switch_root"]

# (name, major, minor) of the nodes every container gets in a runtime-made /dev (runc's list).
DEFAULT_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
                   ("tty", 5, 0))
DEV_SYMLINKS = (("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"), ("/proc/self/fd/1", "stdout"),
                ("/proc/self/fd/2", "stderr"), ("pts/ptmx", "ptmx"))
# (path under /dev, source, type, flags, data) of a runtime-made /dev (runc's default spec).
DEV_MOUNTS = (
    ("", "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k"),
    ("/pts", "devpts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"),
    ("/shm", "shm", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=1777,size=65536k"),
)
# statvfs f_flag bits that a remount must repeat (they equal the MS_* bits).
_KEEP_FLAGS = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC


def inside(root: str, unsafe: str) -> str:
    """``unsafe`` resolved under ``root`` (symlinks followed, clamped).

    Raises:
        PathEscapeError: should the result ever lie outside ``root``.
    """
    path = secure_join(root, unsafe)
    if path != root and not path.startswith(root.rstrip("/") + "/"):
        raise PathEscapeError(f"{unsafe} escapes the container's rootfs", path=unsafe)
    return path


def prepare_rootfs(plan: RootfsPlan, console: str | None, cwd: str) -> None:
    """Mount everything under the rootfs, still seen from the agent's root.

    Raises:
        OSError: naming the failing mount or path.
    """
    sc.mount(None, "/", None, plan.propagation)
    if plan.propagation & sc.MS_SHARED:
        # pivot_root refuses a new root whose parent mount is shared (runc: rootfsParentMountPrivate).
        sc.mount(None, mount_point_of(plan.path), None, sc.MS_PRIVATE)
    sc.mount(plan.path, plan.path, None, sc.MS_BIND | sc.MS_REC)
    readonly_later = []
    for step in plan.mounts:
        target = mount_step(plan.path, step)
        if step.readonly_later:
            readonly_later.append((target, step.flags))
    if plan.default_dev:
        mount_default_dev(plan.path)
    if plan.default_dev or plan.populate_dev:
        populate_dev(plan.path)
    for device in plan.devices:
        make_device(plan.path, device)
    if console is not None:
        target = inside(plan.path, "/dev/console")
        _create_file(target)
        sc.mount(console, target, None, sc.MS_BIND)
    os.makedirs(inside(plan.path, cwd), mode=0o755, exist_ok=True)
    for target, flags in readonly_later:
        sc.mount(target, target, None, flags | sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)


def mount_point_of(path: str) -> str:
    """The mount point of the mount ``path`` lies on (/proc/self/mountinfo, longest prefix)."""
    with open("/proc/self/mountinfo") as fh:
        points = [_unescape(line.split()[4]) for line in fh]
    best = "/"
    for point in points:
        inside_point = path == point or path.startswith(point.rstrip("/") + "/")
        if inside_point and len(point) > len(best):
            best = point
    return best


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def mount_step(root: str, step: MountStep) -> str:
    """Perform one spec mount inside ``root``; returns where it went.

    Raises:
        OSError: naming the mount.
    """
    target = inside(root, step.destination)
    if step.bind and not stat.S_ISDIR(os.stat(step.source).st_mode):
        _create_file(target)
    elif not os.path.isdir(target):
        os.makedirs(target, mode=0o755, exist_ok=True)
    sc.mount(step.source, target, step.fstype or None, step.flags, step.data)
    if step.remount:
        sc.mount(step.source, target, None, step.flags | sc.MS_REMOUNT)
    for propagation in step.propagation:
        sc.mount(None, target, None, propagation)
    return target


def mount_default_dev(root: str) -> None:
    """A tmpfs /dev with a private devpts instance and a /dev/shm, for specs that mount no /dev.

    Raises:
        OSError: naming the mount.
    """
    dev = inside(root, "/dev")
    for name, source, fstype, flags, data in DEV_MOUNTS:
        os.makedirs(dev + name, mode=0o755, exist_ok=True)
        sc.mount(source, dev + name, fstype, flags, data)


def populate_dev(root: str) -> None:
    """Create null, zero, full, random, urandom, tty and the fd/std*/ptmx symlinks in /dev.

    Raises:
        OSError: naming the node.
    """
    dev = inside(root, "/dev")
    for name, major, minor in DEFAULT_DEVICES:
        make_device(root, _node(f"/dev/{name}", major, minor))
    for target, name in DEV_SYMLINKS:
        link = f"{dev}/{name}"
        if name == "ptmx" and os.path.lexists(link):
            os.unlink(link)  # runc: /dev/ptmx always points at the container's devpts
        if not os.path.lexists(link):
            os.symlink(target, link)


def _node(path: str, major: int, minor: int) -> DeviceNode:
    return DeviceNode(path=path, mode=stat.S_IFCHR | 0o666, major=major, minor=minor, uid=0, gid=0)


def make_device(root: str, device: DeviceNode) -> None:
    """mknod one node (bind-mounting the agent's node if mknod is refused).

    Raises:
        OSError: naming the node.
    """
    target = inside(root, device.path)
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    if os.path.lexists(target):
        if stat.S_ISDIR(os.lstat(target).st_mode):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), device.path)
        os.unlink(target)
    try:
        os.mknod(target, device.mode, os.makedev(device.major, device.minor))
    except PermissionError:
        _create_file(target)
        sc.mount(device.path, target, None, sc.MS_BIND)
        return
    os.chmod(target, device.mode & 0o7777)
    os.chown(target, device.uid, device.gid)


def _create_file(path: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if not os.path.exists(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))


def switch_root(root: str, *, no_pivot: bool) -> None:
    """Make ``root`` the process's "/": pivot_root(".", ".") and detach the old root, like runc.

    On the initramfs pivot_root fails with EINVAL: then move the rootfs onto "/" and chroot (runc's
    --no-pivot), which is also what ``no_pivot`` forces.

    Raises:
        OSError: naming the call.
    """
    if not no_pivot:
        old = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.chdir(root)
            sc.pivot_root(".", ".")
            os.fchdir(old)
            sc.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC)
            sc.umount2(".", sc.MNT_DETACH)
            os.chdir("/")
            return
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
        finally:
            os.close(old)
    os.chdir(root)
    sc.mount(root, "/", None, sc.MS_MOVE)
    os.chroot(".")
    os.chdir("/")


def finish_rootfs(plan: RootfsPlan) -> None:
    """After switch_root: root propagation, read-only and masked paths, then a read-only root.

    Raises:
        OSError: naming the path.
    """
    # runc applies the propagation to the new "/" too: only now is it the container's own mount.
    sc.mount(None, "/", None, plan.propagation)
    for path in plan.readonly_paths:
        try:
            sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
        except FileNotFoundError:
            continue
        keep = os.statvfs(path).f_flag & _KEEP_FLAGS
        sc.mount(path, path, None, keep | sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
    for path in plan.masked_paths:
        try:
            sc.mount("/dev/null", path, None, sc.MS_BIND)
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY)
    if plan.readonly:
        keep = os.statvfs("/").f_flag & _KEEP_FLAGS
        sc.mount(None, "/", None, keep | sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)

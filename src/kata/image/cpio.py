"""A reproducible newc ("070701") cpio writer, the format the kernel unpacks as an initramfs."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["CpioWriter", "write_tree"]

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
CHUNK = 1 << 20


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


class CpioWriter:
    """Writes newc entries to a binary stream: owner root, one fixed mtime, inodes numbered in order.

    The same calls give the same bytes, so an image is a pure function of its tree.
    """

    def __init__(self, sink: BinaryIO, *, mtime: int = 0) -> None:
        self._sink = sink
        self._mtime = mtime
        self._inode = 0
        self.written = 0

    def _entry(self, name: str, mode: int, size: int, *, nlink: int = 1,
               rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.lstrip("/").encode() or b"."
        self._inode += 1
        fields = (self._inode, mode, 0, 0, nlink, self._mtime, size, 0, 0, rdev[0], rdev[1],
                  len(encoded) + 1, 0)
        header = MAGIC + b"".join(b"%08X" % field for field in fields) + encoded + b"\0"
        self._write(header + _pad(len(header)))

    def _write(self, data: bytes) -> None:
        self._sink.write(data)
        self.written += len(data)

    def add_directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, 0, nlink=2)

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, len(data))
        self._write(data + _pad(len(data)))

    def add_file(self, name: str, source: Path, mode: int | None = None) -> None:
        """Add the contents of ``source`` (its permission bits unless ``mode`` is given).

        Raises:
            OSError: when ``source`` cannot be read, or changes size while it is copied.
        """
        with source.open("rb") as fh:
            info = os.fstat(fh.fileno())
            perm = stat.S_IMODE(info.st_mode) if mode is None else mode
            self._entry(name, stat.S_IFREG | perm, info.st_size)
            copied = 0
            while chunk := fh.read(CHUNK):
                self._write(chunk)
                copied += len(chunk)
        if copied != info.st_size:
            raise OSError(f"{source} changed size while being archived")
        self._write(_pad(copied))

    def add_symlink(self, name: str, target: str) -> None:
        data = target.encode()
        self._entry(name, stat.S_IFLNK | 0o777, len(data))
        self._write(data + _pad(len(data)))

    def add_char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, 0, rdev=(major, minor))

    def close(self) -> None:
        """Write the trailer entry (the stream stays open)."""
        self._entry(TRAILER, 0, 0)


def write_tree(writer: CpioWriter, root: Path) -> int:
    """Add everything under ``root`` (dirs, files, symlinks), parents first, in sorted order.

    Returns the number of entries written.

    Raises:
        OSError: when the tree cannot be read; ValueError for a file type cpio cannot hold here.
    """
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        rel = base.relative_to(root).as_posix()
        if rel != ".":
            writer.add_directory(rel, stat.S_IMODE(base.stat().st_mode))
            count += 1
        # os.walk lists symlinks to directories under dirnames; archive them as links.
        names = sorted(filenames + [d for d in dirnames if (base / d).is_symlink()])
        for name in names:
            path = base / name
            arcname = path.relative_to(root).as_posix()
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                writer.add_symlink(arcname, os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                writer.add_file(arcname, path)
            else:
                raise ValueError(f"{path}: only directories, files and symlinks go into the image")
            count += 1
    return count

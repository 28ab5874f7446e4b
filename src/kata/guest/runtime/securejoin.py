"""Resolve a container path inside its rootfs, following symlinks without ever leaving the rootfs."""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["MAX_SYMLINKS", "clean_path", "escapes", "secure_join"]

MAX_SYMLINKS = 255


def clean_path(path: str) -> str:
    """``path`` made absolute and lexically clean ("a/../b" -> "/b"); ".." never rises above "/"."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def escapes(path: str) -> bool:
    """Whether ``path`` climbs above its starting point lexically ("../x", "/a/../../x")."""
    depth = 0
    for part in path.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def secure_join(root: str, unsafe: str) -> str:
    """``root`` joined with ``unsafe`` with every symlink resolved as if ``root`` were "/".

    filepath-securejoin's semantics: ".." and absolute symlink targets are clamped at ``root``;
    components that do not exist are taken literally. The result always lies under ``root``.

    Raises:
        OSError: ELOOP after MAX_SYMLINKS symlinks.
    """
    root = root.rstrip("/") or "/"
    pending = [p for p in unsafe.split("/") if p]
    pending.reverse()
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        host = _host_path(root, [*resolved, part])
        try:
            mode = os.lstat(host).st_mode
        except (FileNotFoundError, NotADirectoryError):
            mode = 0
        if not stat.S_ISLNK(mode):
            resolved.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), _host_path(root, resolved))
        target = os.readlink(host)
        if target.startswith("/"):
            resolved = []
        pending.extend(reversed([p for p in target.split("/") if p]))
    return _host_path(root, resolved)


def _host_path(root: str, parts: list[str]) -> str:
    if not parts:
        return root
    return ("" if root == "/" else root) + "/" + "/".join(parts)

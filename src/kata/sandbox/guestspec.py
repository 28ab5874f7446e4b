"""The one pure function that turns a host OCI spec into the spec the guest agent runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from kata.errors import OciError
from kata.oci import Linux, Mount, Namespace, Root, Spec
from kata.sandbox.paths import VM_LAYOUT, GuestLayout

__all__ = ["GuestContainer", "HostShare", "SourceKind", "guest_container", "is_bind"]

SourceKind = Literal["dir", "file"]
# Mounts at these destinations are the guest's own (its /proc, /sys, /dev), never host paths to share.
_SYSTEM = ("/proc", "/sys", "/dev")
_SHM = "/dev/shm"
# A host /dev/shm bind (Docker's --ipc shareable) becomes the guest's own shm, as Kata's ephemeral storage.
_GUEST_SHM = Mount(destination=_SHM, type="tmpfs", source="shm",
                   options=("nosuid", "noexec", "nodev", "mode=1777", "size=65536k"))
_NAME_MAX = 100


@dataclass(frozen=True)
class HostShare:
    """A host file or directory bind-mounted into the container's share dir (the guest sees it there).

    ``target`` is relative to ``<shared>/<container id>/``: ``rootfs`` or ``mounts/<n>-<destination>``.
    """

    source: str
    target: str
    kind: SourceKind = "dir"
    readonly: bool = False


@dataclass(frozen=True)
class GuestContainer:
    """What to send to the agent (``spec``) and what to share first (``shares``)."""

    spec: Spec
    shares: tuple[HostShare, ...]


def is_bind(mount: Mount) -> bool:
    """Whether ``mount`` is a bind mount (by type or by a bind/rbind option)."""
    return mount.type == "bind" or "bind" in mount.options or "rbind" in mount.options


def _system(destination: str) -> bool:
    return any(destination == p or destination.startswith(f"{p}/") for p in _SYSTEM)


def _share_name(index: int, destination: str) -> str:
    flat = destination.strip("/").replace("/", "-") or "root"
    return f"mounts/{index}-{flat[:_NAME_MAX]}"


def _rewrite_mounts(mounts: tuple[Mount, ...], base: str,
                    sources: Mapping[str, SourceKind]) -> tuple[tuple[Mount, ...], tuple[HostShare, ...]]:
    out: list[Mount] = []
    shares: list[HostShare] = []
    for index, mount in enumerate(mounts):
        if not is_bind(mount):
            out.append(mount)
        elif mount.destination == _SHM:
            out.append(_GUEST_SHM)
        elif _system(mount.destination) or mount.source not in sources:
            out.append(mount)  # the guest's own path (or nothing on the host): leave it to the agent
        else:
            name = _share_name(index, mount.destination)
            shares.append(HostShare(mount.source, name, sources[mount.source], "ro" in mount.options))
            out.append(replace(mount, source=f"{base}/{name}", type="bind"))
    return tuple(out), tuple(shares)


def _guest_linux(linux: Linux | None, keep_seccomp: bool) -> Linux | None:
    if linux is None:
        return None
    # The container joins the VM's network (the host's netns is the sandbox's, wired to the VM's NIC);
    # other namespace paths name host namespaces, meaningless in the guest: new ones are made there.
    namespaces = tuple(Namespace(type=ns.type) for ns in linux.namespaces if ns.type != "network")
    return replace(linux, namespaces=namespaces, seccomp=linux.seccomp if keep_seccomp else None)


def guest_container(spec: Spec, container_id: str, rootfs: str, *, sources: Mapping[str, SourceKind],
                    layout: GuestLayout = VM_LAYOUT, keep_seccomp: bool = False) -> GuestContainer:
    """The guest's view of a container: pure, no I/O.

    ``rootfs`` is the host root filesystem (shared as ``rootfs``); ``sources`` maps the bind-mount
    sources that exist on the host to their kind (the caller looks them up). root.path moves to the
    share dir in the guest; host bind mounts are shared and rewritten to their guest path; proc,
    sysfs, tmpfs, devpts, mqueue and cgroup mounts stay; the network namespace is dropped (the
    container uses the VM's), other namespace paths are emptied; hooks are dropped (they run on the
    host); seccomp is kept only with ``keep_seccomp``.

    Raises:
        OciError: the spec has no root or no process.
    """
    if spec.root is None:
        raise OciError("config.json: root is required to run a container")
    if spec.process is None:
        raise OciError("config.json: process is required to run a container")
    base = layout.container(container_id)
    mounts, shares = _rewrite_mounts(spec.mounts, base, sources)
    guest = replace(spec, root=Root(path=f"{base}/rootfs", readonly=spec.root.readonly), mounts=mounts,
                    hooks=None, linux=_guest_linux(spec.linux, keep_seccomp))
    return GuestContainer(guest, (HostShare(rootfs, "rootfs"), *shares))

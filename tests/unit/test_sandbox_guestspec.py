"""Golden tests of the one pure spec rewrite: host OCI spec -> the spec the guest agent runs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kata.errors import OciError
from kata.oci import Hook, Hooks, Mount, Namespace, Seccomp, Spec, default_spec, spec_to_json
from kata.sandbox import GuestLayout, HostShare, guest_container

DOCKER = "/var/lib/docker/containers/x"
SOURCES = {f"{DOCKER}/hosts": "file", f"{DOCKER}/resolv.conf": "file", "/srv/data": "dir",
           f"{DOCKER}/mounts/shm": "dir", "/dev/kmsg": "file"}


def docker_like_spec() -> Spec:
    spec = default_spec()
    assert spec.linux is not None
    extra = (
        Mount(destination="/etc/hosts", type="bind", source=f"{DOCKER}/hosts", options=("rbind", "rprivate")),
        Mount(destination="/etc/resolv.conf", type="bind", source=f"{DOCKER}/resolv.conf", options=("rbind", "ro")),
        Mount(destination="/data", type="none", source="/srv/data", options=("rbind", "rw")),
        Mount(destination="/dev/shm", type="bind", source=f"{DOCKER}/mounts/shm", options=("rbind",)),
        Mount(destination="/dev/kmsg", type="bind", source="/dev/kmsg", options=("rbind",)),
        Mount(destination="/missing", type="bind", source="/not/on/host", options=("rbind",)),
    )
    namespaces = (Namespace(type="pid"), Namespace(type="network", path="/var/run/netns/cni-1"),
                  Namespace(type="ipc", path="/proc/42/ns/ipc"), Namespace(type="uts"), Namespace(type="mount"))
    return replace(spec, mounts=(*spec.mounts[:5], *extra), hooks=Hooks(prestart=(Hook(path="/usr/bin/hook"),)),
                   linux=replace(spec.linux, namespaces=namespaces, seccomp=Seccomp(default_action="SCMP_ACT_ERRNO")))


GUEST = "/run/kata-containers/shared/containers/c1"
GOLDEN_MOUNTS = [
    ("/proc", "proc", "proc", []),
    ("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
    ("/dev/pts", "devpts", "devpts", ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
    ("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
    ("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
    ("/etc/hosts", "bind", f"{GUEST}/mounts/5-etc-hosts", ["rbind", "rprivate"]),
    ("/etc/resolv.conf", "bind", f"{GUEST}/mounts/6-etc-resolv.conf", ["rbind", "ro"]),
    ("/data", "bind", f"{GUEST}/mounts/7-data", ["rbind", "rw"]),
    ("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
    ("/dev/kmsg", "bind", "/dev/kmsg", ["rbind"]),
    ("/missing", "bind", "/not/on/host", ["rbind"]),
]
GOLDEN_SHARES = (
    HostShare("/bundles/c1/rootfs", "rootfs", "dir", readonly=False),
    HostShare(f"{DOCKER}/hosts", "mounts/5-etc-hosts", "file", readonly=False),
    HostShare(f"{DOCKER}/resolv.conf", "mounts/6-etc-resolv.conf", "file", readonly=True),
    HostShare("/srv/data", "mounts/7-data", "dir", readonly=False),
)


def test_docker_like_spec_golden() -> None:
    spec = docker_like_spec()
    guest = guest_container(spec, "c1", "/bundles/c1/rootfs", sources=SOURCES)  # type: ignore[arg-type]
    data = spec_to_json(guest.spec)
    assert data["root"] == {"path": f"{GUEST}/rootfs", "readonly": True}
    assert [(m["destination"], m["type"], m["source"], m.get("options", [])) for m in data["mounts"]] == GOLDEN_MOUNTS
    assert data["linux"]["namespaces"] == [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
    assert "hooks" not in data and "seccomp" not in data["linux"]
    assert guest.shares == GOLDEN_SHARES
    # Everything else passes through untouched.
    assert guest.spec.process == spec.process and guest.spec.hostname == spec.hostname
    assert guest.spec.linux is not None and spec.linux is not None
    assert guest.spec.linux.resources == spec.linux.resources
    assert guest.spec.linux.masked_paths == spec.linux.masked_paths


def test_the_function_is_pure_and_deterministic() -> None:
    spec = docker_like_spec()
    first = guest_container(spec, "c1", "/r", sources=SOURCES)  # type: ignore[arg-type]
    assert first == guest_container(spec, "c1", "/r", sources=SOURCES)  # type: ignore[arg-type]
    assert spec == docker_like_spec()  # the input is not changed


def test_layout_and_seccomp_options() -> None:
    spec = docker_like_spec()
    layout = GuestLayout("/tmp/agent-root", host_mode=True)
    guest = guest_container(spec, "web", "/r", sources={}, layout=layout, keep_seccomp=True)
    assert guest.spec.root is not None and guest.spec.root.path == "/tmp/agent-root/shared/containers/web/rootfs"
    assert guest.spec.linux is not None and guest.spec.linux.seccomp == Seccomp(default_action="SCMP_ACT_ERRNO")
    assert guest.shares == (HostShare("/r", "rootfs"),)  # no host sources: binds stay as they are


def test_long_destinations_get_bounded_names() -> None:
    deep = "/" + "/".join(["d" * 20] * 10)
    spec = replace(default_spec(), mounts=(Mount(destination=deep, type="bind", source="/srv", options=("rbind",)),))
    [_, share] = guest_container(spec, "c", "/r", sources={"/srv": "dir"}).shares
    assert share.target.startswith("mounts/0-dddd") and len(share.target) == len("mounts/0-") + 100


@pytest.mark.parametrize("missing", ["root", "process"])
def test_a_spec_without_root_or_process_is_refused(missing: str) -> None:
    with pytest.raises(OciError, match=f"{missing} is required"):
        spec = replace(default_spec(), root=None) if missing == "root" else replace(default_spec(), process=None)
        guest_container(spec, "c", "/r", sources={})

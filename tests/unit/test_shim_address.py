"""The shim socket address: containerd 1.6's SocketAddress, byte for byte."""

from __future__ import annotations

import pytest

from kata.shim.address import SOCKET_ROOT, go_join, socket_address, socket_path


@pytest.mark.parametrize(("elements", "joined"), [
    (("/run/containerd/containerd.sock", "default", "abc"), "/run/containerd/containerd.sock/default/abc"),
    (("/tmp/x//containerd.sock/", "k8s.io", "id"), "/tmp/x/containerd.sock/k8s.io/id"),
    (("/a/../b/./c.sock", "ns", "id"), "/b/c.sock/ns/id"),
    (("", "default", "x"), "default/x"),
    (("//run/c.sock", "ns", "id"), "/run/c.sock/ns/id"),  # Go's Clean drops POSIX's "//" too
    (("", "", ""), ""),
])
def test_go_join_cleans_like_filepath_join(elements: tuple[str, ...], joined: str) -> None:
    assert go_join(*elements) == joined


def test_socket_address_matches_what_containerds_runc_shim_listened_on() -> None:
    # Measured: containerd 1.6.20 at this address ran `ctr run -d IMG runc1`; containerd-shim-runc-v2
    # created /run/containerd/s/8ee78a7d... (tests/e2e/test_shim_ctr.py checks it live).
    address = socket_address("/tmp/ctd-nwzvitcr/containerd.sock", "default", "runc1")
    assert address == f"unix://{SOCKET_ROOT}/8ee78a7d0ae5db551babbf04b644783036257ee81cb1f762100a2e2754de5c16"
    assert socket_path(address) == address.removeprefix("unix://")


def test_each_namespace_and_id_has_its_own_socket() -> None:
    addresses = {socket_address("/run/containerd/containerd.sock", ns, cid)
                 for ns in ("default", "k8s.io") for cid in ("a", "b")}
    assert len(addresses) == 4
    assert all(len(a.rpartition("/")[2]) == 64 for a in addresses)

"""A tap device in a network namespace, opened for the VMM, and the tc mirred redirect that joins it to a
container's interface (Kata's ``tcfilter`` model)."""

from __future__ import annotations

import fcntl
import os
import struct
from typing import Any

from kata.errors import NetworkError
from kata.network.netns import in_netns

__all__ = ["INGRESS_HANDLE", "has_ingress", "open_macvtap", "open_tap", "redirect", "remove_ingress"]

TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16
INGRESS_HANDLE = 0xFFFF0000  # "ffff:"
ETH_P_ALL = 0x0003


def open_tap(netns: str, name: str) -> int:
    """Create the tap ``name`` in ``netns`` and return its (close-on-exec) fd: the device lives as long as an
    fd to it is open, so it goes away with the VMM that inherits it.

    Raises:
        NetworkError: the namespace cannot be entered or the tap cannot be created.
    """
    if not 0 < len(name.encode()) < IFNAMSIZ:
        raise NetworkError(f"tap name {name!r}: must be 1-15 bytes")

    def create() -> int:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        except OSError:
            os.close(fd)
            raise
        return fd

    try:
        return in_netns(netns, create)
    except OSError as exc:
        raise NetworkError(f"create tap {name} in {netns}: {exc.strerror}") from exc


def open_macvtap(ipr: Any, lower: int, name: str, mtu: int) -> int:
    """Make the macvtap ``name`` in passthru mode on link ``lower`` (it takes the lower link's MAC and
    every frame that arrives there) and open its character device for the VMM.

    devtmpfs names the device ``/dev/tap<ifindex>`` whatever namespace the link is in, so the opened
    device is checked to be ours (TUNGETIFF names its link).

    Raises:
        NetworkError: the link or device cannot be made or opened, or the device is another link's.
    """
    ipr.link("add", ifname=name, kind="macvtap", link=lower, macvtap_mode="passthru")
    index = ipr.link_lookup(ifname=name)[0]
    ipr.link("set", index=index, mtu=mtu, state="up")
    path = f"/dev/tap{index}"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise NetworkError(f"open {path} (macvtap {name}): {exc.strerror}") from exc
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        answer = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
    except OSError as exc:
        os.close(fd)
        raise NetworkError(f"set up {path} (macvtap {name}): {exc.strerror}") from exc
    owner = answer[:IFNAMSIZ].rstrip(b"\0").decode()
    if owner != name:
        os.close(fd)
        raise NetworkError(f"{path} belongs to link {owner!r}, not {name!r} (two namespaces share the ifindex)")
    return fd


def has_ingress(ipr: Any, index: int) -> bool:
    """Whether link ``index`` has an ingress qdisc."""
    return any(q.get_attr("TCA_KIND") == "ingress" for q in ipr.get_qdiscs(index=index))


def redirect(ipr: Any, source: int, target: int) -> None:
    """Everything arriving on link ``source`` leaves through link ``target``: an ingress qdisc on
    ``source`` with a u32 match-all filter whose action is a mirred egress redirect (as ``tc filter add
    dev SRC parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev DST``)."""
    ipr.tc("add", "ingress", source, "ffff:")
    ipr.tc("add-filter", "u32", source, ":1", parent="ffff:", protocol=ETH_P_ALL, target=0x1,
           keys=["0x0/0x0+0"], action={"kind": "mirred", "direction": "egress", "action": "redirect",
                                       "ifindex": target})


def remove_ingress(ipr: Any, index: int) -> None:
    """Delete link ``index``'s ingress qdisc and with it its filters (nothing if it has none)."""
    if has_ingress(ipr, index):
        ipr.tc("del", "ingress", index, "ffff:")

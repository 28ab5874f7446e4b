"""Find and open the agent channel: a named virtio-serial port, or a vsock listening socket."""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kata.guest.cmdline import GuestOptions

__all__ = [
    "CHANNEL_DRIVERS",
    "VIRTIO_PORTS",
    "Channel",
    "channel_modules",
    "find_serial_port",
    "open_channel",
    "unneeded_modules",
]

VIRTIO_PORTS = "/sys/class/virtio-ports"
POLL_INTERVAL = 0.005
# The kernel module each kind of channel needs last (the module list loads its dependencies first).
CHANNEL_DRIVERS = {"serial": "virtio_console", "vsock": "vmw_vsock_virtio_transport"}
PCI_DEVICES = "/sys/bus/pci/devices"
# Modules of a transport or channel this VM does not use: loading them only delays the ones it needs
# (under TCG virtio_mmio alone took 0.6 s at boot, ahead of fuse and virtiofs that CreateSandbox waits for).
TRANSPORT_MODULES = {"virtio_pci": ("virtio_pci", "virtio_pci_modern_dev", "virtio_pci_legacy_dev"),
                     "virtio_mmio": ("virtio_mmio",)}
VSOCK_MODULES = ("vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport")


class Channel:
    """The agent's transport to the host.

    ``kind`` "serial": ``fd`` is the open port, one byte stream for the VM's whole life (the host
    may disconnect and reconnect: reads then return b"" until it is back). ``kind`` "vsock": ``fd``
    is a listening socket; each host connection is accepted from it.
    """

    __slots__ = ("address", "fd", "kind")

    def __init__(self, kind: str, fd: int, address: str) -> None:
        self.kind = kind
        self.fd = fd
        self.address = address

    def __repr__(self) -> str:
        return f"Channel({self.kind!r}, fd={self.fd}, address={self.address!r})"


def channel_modules(kind: str, pci_devices: str = PCI_DEVICES) -> tuple[str, ...]:
    """The kernel modules the channel of ``kind`` needs: its driver and the virtio transport in use.

    A machine without PCI devices (microvm) has its virtio devices on virtio-mmio.
    """
    try:
        transport = "virtio_pci" if os.listdir(pci_devices) else "virtio_mmio"
    except OSError:
        transport = "virtio_mmio"
    return (CHANNEL_DRIVERS.get(kind, "virtio_console"), transport)


def unneeded_modules(kind: str, transport: str) -> frozenset[str]:
    """Modules the list may hold that a VM whose channel is ``kind`` on ``transport`` never needs.

    The other virtio transport (q35 has no virtio-mmio devices, microvm no PCI bus, and neither gains
    one by hotplug) and, with a serial channel, the vsock stack (the agent's only vsock user is its
    channel).
    """
    unused = [module for name, modules in TRANSPORT_MODULES.items() if name != transport for module in modules]
    if kind != "vsock":
        unused.extend(VSOCK_MODULES)
    return frozenset(unused)


def _named_port(name: str, ports_dir: str) -> str | None:
    try:
        entries = os.listdir(ports_dir)
    except OSError:
        return None
    for entry in sorted(entries):
        try:
            with open(f"{ports_dir}/{entry}/name", "rb") as fh:
                if fh.read().strip().decode(errors="replace") == name:
                    return entry
        except OSError:
            continue
    return None


def find_serial_port(name: str, timeout: float, *, ports_dir: str = VIRTIO_PORTS,
                     dev_dir: str = "/dev") -> str:
    """The device node (``/dev/vportNpM``) of the virtio-serial port called ``name``.

    The port's name arrives from the host after the device is probed, and devtmpfs creates the
    node asynchronously, so both are polled for up to ``timeout`` seconds.

    Raises:
        TimeoutError: when no such port (or node) appears in time.
    """
    deadline = time.monotonic() + timeout
    while True:
        entry = _named_port(name, ports_dir)
        if entry is not None and os.path.exists(f"{dev_dir}/{entry}"):
            return f"{dev_dir}/{entry}"
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no virtio-serial port named {name} after {timeout:g} s")
        time.sleep(POLL_INTERVAL)


def _vsock_listener(port: int, timeout: float) -> int:
    import socket  # only vsock guests pay for the socket module

    deadline = time.monotonic() + timeout
    while not os.path.exists("/dev/vsock"):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no /dev/vsock after {timeout:g} s (no vsock device or module?)")
        time.sleep(POLL_INTERVAL)
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    sock.bind((socket.VMADDR_CID_ANY, port))
    sock.listen(16)
    return sock.detach()


def open_channel(options: GuestOptions) -> Channel:
    """Open the channel the command line asks for (default: the ``agent.channel.0`` serial port).

    Raises:
        TimeoutError: when the device does not appear within ``options.channel_timeout``.
        OSError: when it cannot be opened.
    """
    if options.channel_kind == "vsock":
        port = int(options.channel_name)
        return Channel("vsock", _vsock_listener(port, options.channel_timeout), f"vsock://-1:{port}")
    path = find_serial_port(options.channel_name, options.channel_timeout)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
    return Channel("serial", fd, f"serial://{options.channel_name} ({path})")

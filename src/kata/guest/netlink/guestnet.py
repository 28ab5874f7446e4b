"""Kata's guest network operations on model types: configure a NIC, replace the routes, add neighbours."""

from __future__ import annotations

import errno
import time
from dataclasses import replace

from kata.guest.netlink.errors import LinkNotFoundError, NetlinkError
from kata.guest.netlink.model import IFF_LOOPBACK, Address, Link, LinkConfig, Neighbour, Route

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from kata.guest.log import GuestLog
    from kata.guest.netlink.rtnl import RouteSocket

__all__ = ["GuestNetwork"]

POLL_INTERVAL = 0.05
MODULE_WAIT = 30.0
RTPROT_KERNEL = 2
# The temporary name a link gets while it swaps names with the link UpdateInterface renames.
SWAP_NAME = "kata-swap{}"


class GuestNetwork:
    """The network RPCs' work over one RouteSocket; calls must be serialised by the caller.

    Methods raise LinkNotFoundError for an unknown MAC address or device name, and NetlinkError when
    the kernel refuses a change.
    """

    def __init__(self, sock: RouteSocket, log: GuestLog, *,
                 wait_modules: Callable[[float], bool] | None = None) -> None:
        self.sock = sock
        self.log = log
        self.wait_modules = wait_modules

    def close(self) -> None:
        self.sock.close()

    def _links(self) -> list[Link]:
        """Every link, once the NIC drivers are in: virtio_net is a module loaded while the agent starts."""
        if self.wait_modules is not None:
            self.wait_modules(MODULE_WAIT)
        return self.sock.links()

    # reading

    def interfaces(self) -> list[Link]:
        """Every link with its addresses."""
        links = self._links()
        addresses: dict[int, list[Address]] = {}
        for index, address in self.sock.addresses():
            addresses.setdefault(index, []).append(address)
        return [replace(link, addresses=tuple(addresses.get(link.index, ()))) for link in links]

    def interface(self, index: int) -> Link:
        """The link ``index`` with its addresses.

        Raises:
            LinkNotFoundError: when it is gone.
        """
        for link in self.interfaces():
            if link.index == index:
                return link
        raise LinkNotFoundError(f"link {index} disappeared")

    def routes(self) -> list[Route]:
        """The main table's routes (IPv4, then IPv6)."""
        return self.sock.routes({link.index: link.name for link in self._links()})

    # UpdateInterface

    def find_by_mac(self, mac: str, *, wait: float = 0.0) -> Link:
        """The link with MAC address ``mac`` (lowest index first), waiting up to ``wait`` seconds for it.

        Raises:
            LinkNotFoundError: when no link has it in time.
        """
        deadline = time.monotonic() + wait
        while True:
            for link in sorted(self._links(), key=lambda found: found.index):
                if link.mac == mac:
                    return link
            if time.monotonic() >= deadline:
                raise LinkNotFoundError(f"no link has MAC address {mac}")
            time.sleep(POLL_INTERVAL)

    def update_interface(self, config: LinkConfig, *, wait: float = 0.0) -> Link:
        """Configure the link with ``config.mac``: exactly ``config.addresses``, name, MTU, ARP, up.

        As Kata's agent: the link goes down, loses every address, gets the requested ones (IPv6 without
        duplicate address detection), then is renamed (swapping names with a link already called so),
        gets its MTU and ARP setting and comes up. Returns the link as it then is.

        Raises:
            LinkNotFoundError: when no link has the MAC address (after ``wait`` seconds).
            NetlinkError: when the kernel refuses a step; the link is brought back up if it was up.
        """
        link = self.find_by_mac(config.mac, wait=wait)
        if link.up:
            self.sock.set_link(link.index, up=False)
        try:
            self._replace_addresses(link, config.addresses)
            self._rename_and_set(link, config)
        except BaseException:
            if link.up:
                try:
                    self.sock.set_link(link.index, up=True)
                except NetlinkError as exc:
                    self.log.warning("could not bring the link back up", link=link.name, error=exc)
            raise
        updated = self.interface(link.index)
        self.log.info("interface updated", mac=config.mac, name=updated.name, mtu=updated.mtu,
                      addresses=" ".join(f"{a.address}/{a.prefix_length}" for a in updated.addresses))
        return updated

    def _replace_addresses(self, link: Link, addresses: Sequence[Address]) -> None:
        for index, address in self.sock.addresses():
            if index == link.index:
                self.sock.delete_address(link.index, address)
        for address in addresses:
            self.sock.add_address(link.index, address)

    def _rename_and_set(self, link: Link, config: LinkConfig) -> None:
        name = config.name or link.name
        holder = None
        if name != link.name:
            holder = next((other for other in self.sock.links() if other.name == name), None)
        if holder is not None:
            # A link cannot be renamed while up, nor to a name in use: park the holder on a free name.
            if holder.up:
                self.sock.set_link(holder.index, up=False)
            self.sock.set_link(holder.index, name=SWAP_NAME.format(holder.index))
        self.sock.set_link(link.index, name=name if name != link.name else "", mtu=config.mtu, up=True,
                           noarp=config.noarp)
        if holder is not None:
            self.sock.set_link(holder.index, name=link.name, up=holder.up or None)
            self.log.info("links swapped names", link=name, other=link.name)

    # UpdateRoutes

    def _index_by_name(self, devices: Sequence[str], what: Sequence[str]) -> dict[str, int]:
        links = {link.name: link.index for link in self._links()}
        for device, label in zip(devices, what, strict=True):
            if device not in links:
                raise LinkNotFoundError(f"{label}: no link named {device!r}")
        return links

    def update_routes(self, routes: Sequence[Route]) -> list[Route]:
        """Replace the main table's routes by ``routes``; returns the routes then in the table.

        Every device is looked up before anything changes. Routes the kernel made (addresses' subnet
        routes) and loopback's stay; the others are deleted. The new routes are added link-scope ones
        (no gateway) first, so that each gateway is reachable when its route comes; a route the kernel
        already has is not an error (as in Kata's agent).

        Raises:
            LinkNotFoundError: when a route names an unknown device.
            NetlinkError: when the kernel refuses to delete or add a route.
        """
        links = self._index_by_name([r.device for r in routes], [f"Routes[{i}]" for i in range(len(routes))])
        self._delete_routes()
        ordered = [r for r in routes if not r.gateway] + [r for r in routes if r.gateway]
        for route in ordered:
            try:
                self.sock.add_route(replace(route, index=links[route.device]))
            except NetlinkError as exc:
                if exc.errno != errno.EEXIST:
                    raise
        result = self.routes()
        self.log.info("routes updated", requested=len(routes), routes=len(result))
        return result

    def _delete_routes(self) -> None:
        links = self.sock.links()
        loopback = {link.index for link in links if link.flags & IFF_LOOPBACK}
        for route in self.sock.routes({link.index: link.name for link in links}):
            if route.protocol == RTPROT_KERNEL or not route.index or route.index in loopback:
                continue
            try:
                self.sock.delete_route(route)
            except NetlinkError as exc:
                if exc.errno != errno.ESRCH:  # gone already (its link went down meanwhile)
                    raise

    # AddARPNeighbors

    def add_neighbours(self, neighbours: Sequence[Neighbour]) -> None:
        """Add (or replace) each neighbour entry; every device is looked up before the first is added.

        Raises:
            LinkNotFoundError: when an entry names an unknown device.
            NetlinkError: when the kernel refuses an entry.
        """
        links = self._index_by_name([n.device for n in neighbours],
                                    [f"ARPNeighbors[{i}]" for i in range(len(neighbours))])
        for neighbour in neighbours:
            self.sock.set_neighbour(neighbour, links[neighbour.device])
        if neighbours:
            self.log.info("neighbours added", count=len(neighbours))

    def neighbours(self) -> list[Neighbour]:
        """Every neighbour entry (for tests and diagnostics)."""
        return self.sock.neighbours({link.index: link.name for link in self.sock.links()})

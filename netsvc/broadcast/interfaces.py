"""Where to broadcast: directed broadcast addresses of the local IPv4 interfaces.

Interfaces are enumerated with `ifaddr <https://pypi.org/project/ifaddr/>`_ (a maintained,
dependency-free wrapper around ``getifaddrs``) instead of parsing ``ip`` output; the
broadcast address of each is computed from its address and prefix by
:func:`netsvc.addr.directed_broadcast`, so ``netsvc addr ADDRESS/PREFIX`` shows the same.

:func:`broadcast_targets` is pure over a list of :class:`InterfaceAddress`;
:func:`local_interfaces` is the one function that asks the system.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence

import attrs

from netsvc.addr import directed_broadcast

__all__ = [
    "LIMITED_BROADCAST",
    "BroadcastTarget",
    "InterfaceAddress",
    "TargetSpec",
    "broadcast_targets",
    "local_interfaces",
]

#: 255.255.255.255: reaches every host on the local link of the *default* interface
#: only, and leaves the machine on a real network. Used only when explicitly asked.
LIMITED_BROADCAST = "255.255.255.255"


@attrs.frozen
class InterfaceAddress:
    """One IPv4 address of one interface."""

    interface: str
    address: ipaddress.IPv4Interface

    @property
    def is_loopback(self) -> bool:
        return self.address.ip.is_loopback


@attrs.frozen
class BroadcastTarget:
    """A destination for announcements and queries, and why it was chosen."""

    address: str
    #: The interface it belongs to ("" for an address given explicitly).
    interface: str = ""
    #: The interface's address/prefix it was computed from (None if given explicitly).
    source: ipaddress.IPv4Interface | None = None

    def __str__(self) -> str:
        if self.source is not None:
            return f"{self.address} ({self.interface} {self.source})"
        return self.address


def local_interfaces() -> list[InterfaceAddress]:
    """The IPv4 addresses of this machine's interfaces (through ``ifaddr``)."""
    import ifaddr  # imported late: only services that broadcast need it

    found: list[InterfaceAddress] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not ip.is_IPv4 or not isinstance(ip.ip, str):
                continue
            try:
                address = ipaddress.IPv4Interface((ip.ip, ip.network_prefix))
            except ValueError:
                continue
            found.append(InterfaceAddress(str(adapter.name), address))
    return found


@attrs.frozen
class TargetSpec:
    """Which broadcast addresses to use; resolved again at each send (interfaces change).

    * ``interfaces``: interface names (``eth0``) or one of their addresses; empty means
      every IPv4 interface except loopback (plus loopback if ``include_loopback``).
      Naming a loopback interface includes it.
    * ``addresses``: explicit destinations (a directed broadcast address, or a unicast
      address of a node on another network); when given alone, no interface is used.
    * ``limited``: also send to 255.255.255.255 (only when explicitly asked).
    """

    interfaces: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    include_loopback: bool = False
    limited: bool = False

    def __attrs_post_init__(self) -> None:
        for address in self.addresses:
            try:
                ipaddress.IPv4Address(address)
            except ValueError:
                raise ValueError(f"{address!r} is not an IPv4 address") from None

    @property
    def uses_interfaces(self) -> bool:
        return bool(self.interfaces) or not self.addresses

    def resolve(
        self, interfaces: Callable[[], Sequence[InterfaceAddress]] = local_interfaces
    ) -> list[BroadcastTarget]:
        """The targets now, deduplicated, in a stable order."""
        targets = list(self.resolve_from(interfaces() if self.uses_interfaces else ()))
        return targets

    def resolve_from(self, interfaces: Iterable[InterfaceAddress]) -> list[BroadcastTarget]:
        """:meth:`resolve` over a given interface list (pure)."""
        targets: list[BroadcastTarget] = []
        if self.uses_interfaces:
            targets.extend(
                broadcast_targets(
                    interfaces, names=self.interfaces, include_loopback=self.include_loopback
                )
            )
        targets.extend(BroadcastTarget(address) for address in self.addresses)
        if self.limited:
            targets.append(BroadcastTarget(LIMITED_BROADCAST))
        seen: set[str] = set()
        unique = []
        for target in targets:
            if target.address not in seen:
                seen.add(target.address)
                unique.append(target)
        return unique


def broadcast_targets(
    interfaces: Iterable[InterfaceAddress],
    *,
    names: Sequence[str] = (),
    include_loopback: bool = False,
) -> list[BroadcastTarget]:
    """Directed broadcast targets of ``interfaces`` (pure).

    ``names`` selects interfaces by name or address (empty: all but loopback, unless
    ``include_loopback``). Addresses on /31 and /32 have no broadcast address and are
    skipped.
    """
    wanted = set(names)
    targets = []
    for entry in interfaces:
        if wanted:
            if entry.interface not in wanted and str(entry.address.ip) not in wanted:
                continue
        elif entry.is_loopback and not include_loopback:
            continue
        broadcast = directed_broadcast(entry.address)
        if broadcast is None:
            continue
        targets.append(BroadcastTarget(str(broadcast), entry.interface, entry.address))
    return targets

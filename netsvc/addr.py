"""Address arithmetic: networks, netmasks, broadcast addresses, classes, port names.

Everything is built on the standard :mod:`ipaddress` module and is pure (no sockets, no
name resolution). :mod:`netsvc.broadcast` computes its directed broadcast addresses with
:func:`directed_broadcast`, so ``netsvc addr`` shows exactly what the broadcaster uses.

The historic classes follow the leading-bit rules of RFC 791 / RFC 1112 (A ``0``, B ``10``,
C ``110``, D ``1110``, E ``1111``). The seed text gives class A as 1.0.0.1-127.255.255.254
(126 usable networks: 0/8 means "this network" and 127/8 is loopback) and writes class E
as starting with ``11110``; RFC 1112 reserves all of 240.0.0.0/4, which is what we report.
Classes have not been used for routing since CIDR (RFC 1519, 1993): they are shown for
teaching and for reading old configurations, never used to guess a netmask.

The command line (``netsvc addr``) is at the end of this module.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys
from collections.abc import Sequence
from typing import Any, TypeAlias

import attrs

__all__ = [
    "CLASSES",
    "WELL_KNOWN_PORTS",
    "AddressError",
    "AddressReport",
    "ClassRule",
    "PortInfo",
    "add_parser",
    "address_class",
    "class_rule",
    "describe",
    "directed_broadcast",
    "host_part",
    "kinds",
    "lookup_port",
    "netmask_to_prefix",
    "parse_interface",
    "plain_host",
    "port_range_name",
    "prefix_to_netmask",
    "usable_hosts",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface: TypeAlias = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class AddressError(ValueError):
    """Text that is not an address, netmask, prefix or port; the message says why."""


# --------------------------------------------------------------------------- parsing


def plain_host(host: str) -> str:
    """The host as people write it: a dual-stack socket's IPv4 peers (``::ffff:a.b.c.d``,
    IPv4-mapped) as ``a.b.c.d``; any other host unchanged."""
    if host[:7].lower() == "::ffff:" and "." in host:
        return host[7:]
    return host


def parse_interface(text: str) -> IPInterface:
    """An address with its network, from any of the usual notations.

    Accepts ``192.168.1.17/24``, ``192.168.1.17/255.255.255.0``, a host mask
    (``192.168.1.17/0.0.0.255``), ``192.168.1.17 255.255.255.0`` (address and netmask
    separated by white space), IPv6 ``2001:db8::1/64``, and a bare address (a host route,
    /32 or /128). Raises :class:`AddressError` with a readable reason otherwise.
    """
    cleaned = "/".join(part.strip() for part in " ".join(text.split()).split("/"))
    if " " in cleaned and "/" not in cleaned:
        address_text, _, mask_text = cleaned.partition(" ")
        cleaned = f"{address_text}/{mask_text}"
    if not cleaned:
        raise AddressError("empty address")
    address_text, slash, mask_text = cleaned.partition("/")
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError:
        raise AddressError(f"{address_text!r} is not an IPv4 or IPv6 address") from None
    if not slash:
        return ipaddress.ip_interface(address)
    if isinstance(address, ipaddress.IPv4Address) and "." in mask_text:
        prefix = _prefix_from_mask(mask_text)
    else:
        prefix = _prefix_from_length(mask_text, address.max_prefixlen)
    return ipaddress.ip_interface((address, prefix))


def _prefix_from_length(text: str, max_prefixlen: int) -> int:
    if not text.isdigit():
        raise AddressError(f"{text!r} is neither a prefix length nor a netmask")
    prefix = int(text)
    if prefix > max_prefixlen:
        raise AddressError(f"prefix /{prefix} is longer than {max_prefixlen} bits")
    return prefix


def _prefix_from_mask(text: str) -> int:
    """A prefix length from an IPv4 netmask or host mask (wildcard) in dotted form."""
    try:
        mask = int(ipaddress.IPv4Address(text))
    except ValueError:
        raise AddressError(f"{text!r} is not a netmask") from None
    inverted = mask ^ 0xFFFFFFFF
    if _is_contiguous_netmask(mask):
        return _ones(mask)
    if _is_contiguous_netmask(inverted):  # a host mask such as 0.0.0.255
        return _ones(inverted)
    raise AddressError(
        f"{text} is not a valid netmask: its one bits must be contiguous from the left"
        f" (like 255.255.255.0)"
    )


def _is_contiguous_netmask(mask: int, bits: int = 32) -> bool:
    inverted = mask ^ ((1 << bits) - 1)
    return inverted & (inverted + 1) == 0  # ones then zeros: the complement is 0..01..1


def _ones(value: int) -> int:
    return bin(value).count("1")


def netmask_to_prefix(netmask: str | IPAddress) -> int:
    """``255.255.255.0`` -> 24 (IPv4 or IPv6 netmask); :class:`AddressError` if not contiguous."""
    try:
        mask = ipaddress.ip_address(netmask)
    except ValueError:
        raise AddressError(f"{netmask!r} is not a netmask") from None
    if not _is_contiguous_netmask(int(mask), mask.max_prefixlen):
        raise AddressError(
            f"{mask} is not a valid netmask: its one bits must be contiguous from the left"
        )
    return _ones(int(mask))


def prefix_to_netmask(prefix: int, version: int = 4) -> IPAddress:
    """24 -> ``255.255.255.0``; ``version=6`` for IPv6 (64 -> ``ffff:ffff:ffff:ffff::``)."""
    bits = {4: 32, 6: 128}.get(version)
    if bits is None:
        raise AddressError(f"IP version must be 4 or 6, not {version}")
    if not 0 <= prefix <= bits:
        raise AddressError(f"prefix /{prefix} is outside 0..{bits} for IPv{version}")
    mask = ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)
    return ipaddress.ip_address(mask) if version == 4 else ipaddress.IPv6Address(mask)


# --------------------------------------------------------------------------- arithmetic


def directed_broadcast(interface: IPInterface | IPNetwork) -> ipaddress.IPv4Address | None:
    """The directed broadcast address of an IPv4 network (host bits all ones).

    ``None`` for IPv6 (no broadcast: use multicast) and for /31 and /32 networks, which
    have no broadcast address (RFC 3021 point-to-point links; a single host).
    """
    network = interface.network if isinstance(interface, IPInterface) else interface
    if not isinstance(network, ipaddress.IPv4Network) or network.prefixlen >= 31:
        return None
    return network.broadcast_address


def host_part(interface: IPInterface) -> int:
    """The host number of an address within its network (``192.168.1.17/24`` -> 17)."""
    return int(interface.ip) & int(interface.network.hostmask)


def usable_hosts(network: IPNetwork) -> tuple[IPAddress, IPAddress, int]:
    """``(first, last, count)`` of the addresses hosts can use in ``network``.

    IPv4: the network and broadcast addresses are excluded, except on /31 (both usable,
    RFC 3021) and /32 (the one address). IPv6: as :meth:`ipaddress.IPv6Network.hosts`,
    the Subnet-Router anycast address (host part all zeros) is excluded, except on /127
    (RFC 6164) and /128. Computed arithmetically: fine for a /8 or a /64.
    """
    first = int(network.network_address)
    size = network.num_addresses
    cls: type[IPAddress] = type(network.network_address)
    spare = network.max_prefixlen - network.prefixlen
    if spare <= 1:
        return cls(first), cls(first + size - 1), size
    if isinstance(network, ipaddress.IPv4Network):
        return cls(first + 1), cls(first + size - 2), size - 2
    return cls(first + 1), cls(first + size - 1), size - 1


@attrs.frozen
class ClassRule:
    """One historic address class (RFC 791 / RFC 1112)."""

    name: str
    leading_bits: str
    first: ipaddress.IPv4Address
    last: ipaddress.IPv4Address
    #: Network bits of the classful netmask (None for D and E, which have none).
    default_prefix: int | None
    purpose: str

    def contains(self, address: ipaddress.IPv4Address) -> bool:
        return self.first <= address <= self.last


def _rule(
    name: str, bits: str, first: str, last: str, prefix: int | None, purpose: str
) -> ClassRule:
    return ClassRule(
        name, bits, ipaddress.IPv4Address(first), ipaddress.IPv4Address(last), prefix, purpose
    )


#: The five classes, in order. The seed's counts: 126 class A networks (1-126; 0 and 127
#: are special), 16384 class B, 2097152 class C networks.
CLASSES: tuple[ClassRule, ...] = (
    _rule("A", "0", "0.0.0.0", "127.255.255.255", 8, "unicast, 126 large networks"),
    _rule("B", "10", "128.0.0.0", "191.255.255.255", 16, "unicast, 16384 medium networks"),
    _rule("C", "110", "192.0.0.0", "223.255.255.255", 24, "unicast, 2097152 small networks"),
    _rule("D", "1110", "224.0.0.0", "239.255.255.255", None, "multicast"),
    _rule("E", "1111", "240.0.0.0", "255.255.255.255", None, "reserved (experimental)"),
)


def class_rule(address: ipaddress.IPv4Address | str) -> ClassRule:
    """The :class:`ClassRule` of an IPv4 address."""
    ip = ipaddress.IPv4Address(address)
    for rule in CLASSES:
        if rule.contains(ip):
            return rule
    raise AssertionError("the classes cover the whole IPv4 space")  # pragma: no cover


def address_class(address: ipaddress.IPv4Address | str) -> str:
    """``"A"`` to ``"E"``: the historic class of an IPv4 address."""
    return class_rule(address).name


_V4 = ipaddress.IPv4Network
_SPECIAL_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_V4("0.0.0.0/8"), "this network (RFC 791; 0.0.0.0 means any address)"),
    (_V4("10.0.0.0/8"), "private (RFC 1918: 10.0.0.0/8)"),
    (_V4("100.64.0.0/10"), "shared address space (RFC 6598: carrier-grade NAT)"),
    (_V4("127.0.0.0/8"), "loopback (127.0.0.0/8; 127.255.255.255 is its broadcast)"),
    (_V4("169.254.0.0/16"), "link-local (RFC 3927: 169.254.0.0/16)"),
    (_V4("172.16.0.0/12"), "private (RFC 1918: 172.16.0.0/12)"),
    (_V4("192.0.0.0/24"), "IETF protocol assignments (RFC 6890)"),
    (_V4("192.0.2.0/24"), "documentation (RFC 5737: TEST-NET-1)"),
    (_V4("192.168.0.0/16"), "private (RFC 1918: 192.168.0.0/16)"),
    (_V4("198.18.0.0/15"), "benchmarking (RFC 2544)"),
    (_V4("198.51.100.0/24"), "documentation (RFC 5737: TEST-NET-2)"),
    (_V4("203.0.113.0/24"), "documentation (RFC 5737: TEST-NET-3)"),
    (_V4("224.0.0.0/4"), "multicast (class D)"),
    (_V4("240.0.0.0/4"), "reserved (class E)"),
)
_V6 = ipaddress.IPv6Network
_SPECIAL_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("::ffff:0:0/96"), "IPv4-mapped"),
    (_V6("64:ff9b::/96"), "NAT64 (RFC 6052)"),
    (_V6("2001:db8::/32"), "documentation (RFC 3849)"),
    (_V6("fc00::/7"), "unique local (RFC 4193; IPv6's private addresses)"),
    (_V6("fe80::/10"), "link-local"),
    (_V6("ff00::/8"), "multicast"),
)


def kinds(address: IPAddress) -> tuple[str, ...]:
    """Human labels for the special ranges ``address`` falls in; ``("global",)`` if none.

    Also marks ``255.255.255.255`` (limited broadcast) and ``0.0.0.0`` (unspecified).
    """
    labels: list[str] = []
    if isinstance(address, ipaddress.IPv4Address):
        if address == ipaddress.IPv4Address("255.255.255.255"):
            labels.append("limited broadcast (never forwarded by routers)")
        elif address.is_unspecified:
            labels.append("unspecified (any address)")
        labels.extend(label for net, label in _SPECIAL_V4 if address in net)
    else:
        labels.extend(label for net, label in _SPECIAL_V6 if address in net)
        mapped = address.ipv4_mapped
        if mapped is not None:
            labels.extend(f"{label} (as {mapped})" for label in kinds(mapped))
    if not labels:
        labels.append("global" if address.is_global else "reserved")
    return tuple(labels)


@attrs.frozen
class AddressReport:
    """Everything ``netsvc addr`` shows about one address and its network."""

    interface: IPInterface
    #: False when the text had no prefix or netmask (shown as a single host).
    prefix_given: bool = True

    @property
    def address(self) -> IPAddress:
        return self.interface.ip

    @property
    def network(self) -> IPNetwork:
        return self.interface.network

    @property
    def version(self) -> int:
        return self.interface.version

    @property
    def prefixlen(self) -> int:
        return self.interface.network.prefixlen

    @property
    def netmask(self) -> IPAddress:
        return self.interface.netmask

    @property
    def hostmask(self) -> IPAddress:
        return self.interface.hostmask

    @property
    def host_number(self) -> int:
        return host_part(self.interface)

    @property
    def broadcast(self) -> ipaddress.IPv4Address | None:
        return directed_broadcast(self.interface)

    @property
    def hosts(self) -> tuple[IPAddress, IPAddress, int]:
        return usable_hosts(self.network)

    @property
    def address_class(self) -> ClassRule | None:
        if isinstance(self.address, ipaddress.IPv4Address):
            return class_rule(self.address)
        return None

    @property
    def kinds(self) -> tuple[str, ...]:
        return kinds(self.address)

    def notes(self) -> list[str]:
        """Remarks on unusual input (the address is the network or broadcast address...)."""
        notes: list[str] = []
        if not self.prefix_given:
            notes.append(
                f"no prefix or netmask given: shown as a single host (/{self.prefixlen});"
                " add one (/24, /255.255.255.0) for its network"
            )
        spare = self.network.max_prefixlen - self.prefixlen
        if spare >= 2 and self.address == self.network.network_address:
            notes.append("the address is the network address itself, not a host")
        if self.broadcast is not None and self.address == self.broadcast:
            notes.append("the address is the directed broadcast address, not a host")
        if self.version == 4 and self.prefixlen == 31:
            notes.append("a /31 is a point-to-point link: both addresses are hosts (RFC 3021)")
        return notes

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (addresses as strings, counts as integers)."""
        first, last, count = self.hosts
        rule = self.address_class
        return {
            "address": str(self.address),
            "version": self.version,
            "network": str(self.network),
            "prefixlen": self.prefixlen,
            "netmask": str(self.netmask),
            "hostmask": str(self.hostmask),
            "host_part": self.host_number,
            "host_part_address": str(type(self.address)(self.host_number)),
            "broadcast": None if self.broadcast is None else str(self.broadcast),
            "first_host": str(first),
            "last_host": str(last),
            "host_count": count,
            "class": None if rule is None else rule.name,
            "kinds": list(self.kinds),
            "notes": self.notes(),
        }


def describe(text: str) -> AddressReport:
    """The :class:`AddressReport` of ``text`` (any notation :func:`parse_interface` takes)."""
    return AddressReport(
        parse_interface(text),
        prefix_given=bool(text.strip()) and ("/" in text or len(text.split()) > 1),
    )


# --------------------------------------------------------------------------- ports


@attrs.frozen
class PortInfo:
    """A port number and the service names registered for it."""

    number: int
    #: ``(protocol, name)`` pairs, such as ``("udp", "tftp")``.
    names: tuple[tuple[str, str], ...]
    range_name: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "port": self.number,
            "names": [{"protocol": proto, "name": name} for proto, name in self.names],
            "range": self.range_name,
        }


#: Ports the seed lists plus those netsvc and its neighbours use, so lookups work on
#: machines without ``/etc/services`` (containers). ``(port, protocols, name)``.
WELL_KNOWN_PORTS: tuple[tuple[int, tuple[str, ...], str], ...] = (
    (7, ("tcp", "udp"), "echo"),
    (9, ("tcp", "udp"), "discard"),
    (13, ("tcp", "udp"), "daytime"),
    (19, ("tcp", "udp"), "chargen"),
    (20, ("tcp",), "ftp-data"),
    (21, ("tcp",), "ftp"),
    (22, ("tcp",), "ssh"),
    (23, ("tcp",), "telnet"),
    (25, ("tcp",), "smtp"),
    (37, ("tcp", "udp"), "time"),
    (53, ("tcp", "udp"), "domain"),
    (67, ("udp",), "bootps"),
    (68, ("udp",), "bootpc"),
    (69, ("udp",), "tftp"),
    (80, ("tcp",), "http"),
    (109, ("tcp",), "pop2"),
    (110, ("tcp",), "pop3"),
    (123, ("udp",), "ntp"),
    (137, ("udp",), "netbios-ns"),
    (138, ("udp",), "netbios-dgm"),
    (139, ("tcp",), "netbios-ssn"),
    (143, ("tcp",), "imap"),
    (161, ("udp",), "snmp"),
    (443, ("tcp",), "https"),
    (514, ("udp",), "syslog"),
    (1900, ("udp",), "ssdp"),
    (5353, ("udp",), "mdns"),
)

_PORT_NAMES: dict[int, list[tuple[str, str]]] = {}
_NAME_PORTS: dict[str, int] = {}
for _number, _protocols, _name in WELL_KNOWN_PORTS:
    _PORT_NAMES.setdefault(_number, []).extend((proto, _name) for proto in _protocols)
    _NAME_PORTS[_name] = _number
_NAME_PORTS.update({"dns": 53, "pop-3": 110, "www": 80, "nameserver": 53})


def port_range_name(port: int) -> str:
    """IANA's range of a port number: well-known, registered or dynamic (RFC 6335)."""
    if not 0 <= port <= 65535:
        raise AddressError(f"{port} is not a port number (0-65535)")
    if port <= 1023:
        return "well-known (0-1023: system services, binding needs root)"
    if port <= 49151:
        return "registered (1024-49151)"
    return "dynamic/private (49152-65535: never assigned, used for ephemeral ports)"


def _system_names(port: int) -> list[tuple[str, str]]:
    found = []
    for proto in ("tcp", "udp"):
        try:
            found.append((proto, socket.getservbyport(port, proto)))
        except (OSError, OverflowError):
            continue
    return found


def lookup_port(text: str | int) -> PortInfo:
    """A port by number (``69``) or service name (``tftp``), with its names.

    Names come from the built-in :data:`WELL_KNOWN_PORTS` and from the system's services
    database (``/etc/services``) where there is one.
    """
    if isinstance(text, int) or text.strip().isdigit():
        number = int(text)
        if not 0 <= number <= 65535:
            raise AddressError(f"{number} is not a port number (0-65535)")
    else:
        name = text.strip().lower()
        found = _NAME_PORTS.get(name)
        if found is None:
            for proto in ("udp", "tcp"):
                try:
                    found = socket.getservbyname(name, proto)
                    break
                except OSError:
                    continue
        if found is None:
            raise AddressError(f"unknown service name {text!r}")
        number = found
    names = list(_PORT_NAMES.get(number, ()))
    for pair in _system_names(number):
        if pair not in names:
            names.append(pair)
    return PortInfo(number, tuple(sorted(names)), port_range_name(number))


# --------------------------------------------------------------------------- command line


def _big(count: int) -> str:
    if count < 10**9:
        return f"{count:,}"
    exponent = count.bit_length() - 1
    if count == 1 << exponent:
        return f"2^{exponent}"
    if count == (1 << (exponent + 1)) - 1:
        return f"2^{exponent + 1} - 1"
    return f"{count:,}"


def format_report(report: AddressReport) -> list[str]:
    """The lines ``netsvc addr`` prints for one address."""
    first, last, count = report.hosts
    lines = [
        f"address    {report.address}",
        f"network    {report.network}",
    ]
    if report.version == 4:
        lines.append(f"netmask    {report.netmask} = /{report.prefixlen}")
        lines.append(f"hostmask   {report.hostmask}")
    else:
        lines.append(f"prefix     /{report.prefixlen} (netmask {report.netmask})")
    host_bits = report.network.max_prefixlen - report.prefixlen
    host_address = type(report.address)(report.host_number)
    lines.append(
        f"host part  {host_address} = host number {report.host_number} ({host_bits} host bits)"
    )
    if report.broadcast is not None:
        lines.append(f"broadcast  {report.broadcast}")
    elif report.version == 4:
        lines.append(f"broadcast  none (a /{report.prefixlen} has no broadcast address)")
    else:
        lines.append("broadcast  none (IPv6 has no broadcast; all nodes: multicast ff02::1)")
    lines.append(f"hosts      {first} - {last} ({_big(count)} usable)")
    rule = report.address_class
    if rule is not None:
        if rule.default_prefix is not None:
            mask = prefix_to_netmask(rule.default_prefix)
            detail = f"classful netmask {mask} = /{rule.default_prefix}, {rule.purpose}"
        else:
            detail = rule.purpose
        lines.append(f"class      {rule.name} (leading bits {rule.leading_bits}; {detail})")
    lines.extend(f"kind       {label}" for label in report.kinds)
    lines.extend(f"note       {note}" for note in report.notes())
    return lines


def format_port(info: PortInfo) -> list[str]:
    """The lines ``netsvc addr --port`` prints for one port."""
    names = ", ".join(f"{name}/{proto}" for proto, name in info.names) or "no registered name"
    return [f"port       {info.number}: {names}", f"range      {info.range_name}"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``netsvc addr`` on the top-level command line."""
    parser = subparsers.add_parser(
        "addr",
        help="address arithmetic: network, netmask, broadcast, hosts, class, port names",
        description="Show the network, netmask and prefix, host part, directed broadcast "
        "address, usable host range and count, historic class and special ranges of each "
        "ADDRESS (192.168.1.17/24, 192.168.1.17/255.255.255.0, 2001:db8::1/64), and the "
        "service names of each --port.",
    )
    _add_arguments(parser)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("addresses", nargs="*", metavar="ADDRESS", help="address[/prefix]")
    parser.add_argument(
        "-p",
        "--port",
        action="append",
        default=[],
        metavar="PORT",
        help="look up a port number or service name (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if not args.addresses and not args.port:
        print("netsvc addr: give at least one ADDRESS or --port", file=sys.stderr)
        return 2
    status = 0
    documents: list[dict[str, Any]] = []
    blocks: list[list[str]] = []
    for text in args.addresses:
        try:
            report = describe(text)
        except AddressError as error:
            print(f"netsvc addr: {error}", file=sys.stderr)
            status = 1
            continue
        documents.append(report.as_dict())
        blocks.append(format_report(report))
    for text in args.port:
        try:
            info = lookup_port(text)
        except AddressError as error:
            print(f"netsvc addr: {error}", file=sys.stderr)
            status = 1
            continue
        documents.append(info.as_dict())
        blocks.append(format_port(info))
    if args.json:
        print(json.dumps(documents, indent=2))
    else:
        print("\n\n".join("\n".join(block) for block in blocks))
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m netsvc.addr ...``: the same as ``netsvc addr ...``."""
    parser = argparse.ArgumentParser(prog="netsvc addr", description=__doc__.split("\n")[0])
    _add_arguments(parser)
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())

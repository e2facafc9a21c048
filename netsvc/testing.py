"""In-memory UDP networking for tests: a fake reactor whose UDP ports talk to each other.

Twisted ships no in-memory UDP reactor (``MemoryReactor`` has no working ``listenUDP``).
:class:`FakeUDPReactor` fills that gap.  It is a
:class:`twisted.internet.testing.MemoryReactorClock` (so also an ``IReactorTime`` clock that
still records ``listenTCP`` and friends) whose ``listenUDP`` returns real-behaving
:class:`FakeUDPPort` objects.  Datagrams written on one port arrive at another port of the same
reactor, through a simulated link that can lose, duplicate, reorder and delay them,
deterministically from a seed.

Delivery is never synchronous: ``write()`` schedules the arrival with ``callLater`` (a delay
of 0 when the link has none), so a test moves the clock with ``advance()``, :meth:`pump` or
:meth:`run_until`.

The fake follows Linux and ``twisted.internet.udp.Port`` where that matters to protocol code:

* a datagram longer than the receiving port's ``maxPacketSize`` is silently truncated;
* a write over 65507 (IPv4) / 65527 (IPv6) bytes raises
  :class:`twisted.internet.error.MessageLengthError` (what Twisted turns ``EMSGSIZE`` into);
* host names are refused with :class:`twisted.internet.error.InvalidAddressError`;
* ``'::'`` is dual-stack and shows IPv4 peers as ``'::ffff:a.b.c.d'``;
* a connected port only receives from its peer, and learns about a missing peer through
  ``connectionRefused()``;
* broadcasting needs ``setBroadcastAllowed(True)`` (else ``PermissionError``/``EACCES``);
* a second bind on an overlapping (address, port) raises
  :class:`twisted.internet.error.CannotListenError`.

Everything stays in memory, any address may be bound (no interface list is consulted), and
nothing is ever sent on a real network.
"""

from __future__ import annotations

import bisect
import errno
import functools
import ipaddress
import math
import os
import random
import socket
import warnings
from collections.abc import Callable, Iterable
from typing import Final, TypeAlias

import attrs
from twisted.internet import abstract
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError, InvalidAddressError, MessageLengthError
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorUDP, IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netsvc.destination import Destination

__all__ = [
    "EPHEMERAL_PORT_RANGE",
    "MAX_UDP_PAYLOAD_IPV4",
    "MAX_UDP_PAYLOAD_IPV6",
    "PERFECT_LINK",
    "BlockingChannel",
    "DatagramStats",
    "FakeUDPPort",
    "FakeUDPReactor",
    "LinkConditions",
    "PumpLimitError",
    "RecordingDatagramProtocol",
    "SentDatagram",
]

_IP: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_Address: TypeAlias = tuple[str, int]

#: Largest UDP payload over IPv4 (65535 - 20 byte IP header - 8 byte UDP header).
MAX_UDP_PAYLOAD_IPV4: Final = 65507
#: Largest UDP payload over IPv6 without jumbograms (65535 - 8 byte UDP header).
MAX_UDP_PAYLOAD_IPV6: Final = 65527
#: Port numbers handed out for port 0, as Linux's default ``ip_local_port_range``.
EPHEMERAL_PORT_RANGE: Final = (32768, 60999)

_LIMITED_BROADCAST: Final = ipaddress.IPv4Address("255.255.255.255")


# --------------------------------------------------------------------------- value objects


def _check_number(attribute: attrs.Attribute[float], value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a number, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{attribute.name} must be finite, not {value!r}")
    return number


def _probability(_instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    if not 0.0 <= _check_number(attribute, value) <= 1.0:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], not {value!r}")


def _duration(_instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    if _check_number(attribute, value) < 0.0:
        raise ValueError(f"{attribute.name} must be >= 0 seconds, not {value!r}")


@attrs.frozen
class LinkConditions:
    """How a simulated link treats each datagram; the default is a perfect, instant link.

    Decisions are made per datagram and per receiver, in this order: lost (probability
    ``loss``)?  If not: duplicated (probability ``duplicate``; two copies then travel)?  Each
    copy then arrives after ``delay`` plus a uniform extra ``[0, jitter]`` seconds, plus
    ``reorder_delay`` more with probability ``reorder``: a reordered datagram is overtaken by
    whatever is sent on the link during that time.

    :param loss: probability in [0, 1] that a datagram is lost.
    :param duplicate: probability in [0, 1] that a delivered datagram arrives twice.
    :param reorder: probability in [0, 1] that a copy is held back by ``reorder_delay``.
    :param delay: fixed one-way latency in seconds.
    :param jitter: maximum extra latency in seconds, drawn uniformly per copy.
    :param reorder_delay: how long (seconds) a reordered copy is held back.
    :raises ValueError: for a probability outside [0, 1], a negative or non-finite time.
    :raises TypeError: for a value that is not an ``int`` or ``float``.
    """

    loss: float = attrs.field(default=0.0, validator=_probability)
    duplicate: float = attrs.field(default=0.0, validator=_probability)
    reorder: float = attrs.field(default=0.0, validator=_probability)
    delay: float = attrs.field(default=0.0, validator=_duration)
    jitter: float = attrs.field(default=0.0, validator=_duration)
    reorder_delay: float = attrs.field(default=0.1, validator=_duration)


#: A link that delivers everything, once, in order, without delay.
PERFECT_LINK: Final = LinkConditions()


@attrs.frozen
class SentDatagram:
    """One datagram accepted by a port's ``write()`` (recorded when ``record=True``).

    :ivar src: the source ``(host, port)``, in the sender's own address family (a wildcard
        port shows the reactor's source address, such as ``'127.0.0.1'``).
    :ivar dst: the destination ``(host, port)`` exactly as the sender addressed it (its
        connected address for a connected port).
    :ivar data: the payload, before any link effect or truncation.
    :ivar time: the clock's ``seconds()`` when it was written.
    """

    src: _Address
    dst: _Address
    data: bytes
    time: float


@attrs.define
class DatagramStats:
    """Counters kept by a :class:`FakeUDPReactor` (assign a fresh instance to reset them).

    :ivar sent: writes accepted (one per ``write()``, whatever happens on the link).
    :ivar delivered: copies handed to a protocol's ``datagramReceived``.
    :ivar lost: datagrams dropped by the link's ``loss`` (per receiver for a broadcast).
    :ivar duplicated: extra copies created by the link's ``duplicate``.
    :ivar undeliverable: copies that arrived where nobody listened, at a port that had
        stopped, or at a connected port from another peer.
    :ivar truncated: delivered copies cut to the receiver's ``maxPacketSize``.
    """

    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    undeliverable: int = 0
    truncated: int = 0

    @property
    def dropped(self) -> int:
        """Everything that did not reach a protocol: ``lost + undeliverable``."""
        return self.lost + self.undeliverable


class PumpLimitError(RuntimeError):
    """More timed calls came due at one instant than the step limit allows.

    This almost always means two protocols answer each other forever over a link without
    delay (a livelock that a real network would turn into a busy loop).
    """


# --------------------------------------------------------------------------- addresses


@functools.lru_cache(maxsize=1024)  # the same few hosts, thousands of times
def _parse_ip(host: str) -> _IP | None:
    """An IP literal as Twisted accepts it (``inet_pton``, IPv6 scope dropped), else None."""
    if abstract.isIPAddress(host):
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, host))
    if abstract.isIPv6Address(host):
        packed = socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
        return ipaddress.IPv6Address(packed)
    return None


def _unmap(ip: _IP) -> _IP:
    """``::ffff:a.b.c.d`` is the IPv4 address a.b.c.d on the wire."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _show(ip: _IP, family: int) -> str:
    """How a socket of ``family`` reports ``ip`` (IPv4 peers of IPv6 sockets are mapped)."""
    if family == socket.AF_INET6 and isinstance(ip, ipaddress.IPv4Address):
        return f"::ffff:{ip}"
    return str(ip)


def _oserror(number: int) -> OSError:
    # OSError(EACCES, ...) is constructed as PermissionError, etc., like the socket module's.
    return OSError(number, os.strerror(number))


def _check_port_number(value: object, what: str) -> int:
    if not isinstance(value, int):
        raise TypeError(f"'{type(value).__name__}' object cannot be interpreted as an integer")
    if not 0 <= value <= 65535:
        raise OverflowError(f"{what}(): port must be 0-65535.")
    return value


@attrs.frozen
class _Scope:
    """Which destination addresses a bound port receives (on its port number)."""

    any_v4: bool
    any_v6: bool
    ip: _IP | None  # a specific (unmapped) address, None for a wildcard

    def accepts(self, dst: _IP) -> bool:
        if self.ip is not None:
            return dst == self.ip
        return self.any_v4 if isinstance(dst, ipaddress.IPv4Address) else self.any_v6

    def overlaps(self, other: _Scope) -> bool:
        """Linux (no SO_REUSEADDR) refuses the second bind exactly when scopes intersect."""
        if self.ip is not None:
            return other.accepts(self.ip)
        if other.ip is not None:
            return self.accepts(other.ip)
        return (self.any_v4 and other.any_v4) or (self.any_v6 and other.any_v6)


@attrs.define
class _WriteFault:
    errno_value: int
    remaining: int | None  # None: until cleared


# --------------------------------------------------------------------------- ports


@implementer(IListeningPort, IUDPTransport)
class FakeUDPPort:
    """A UDP port of a :class:`FakeUDPReactor`: ``IListeningPort`` and ``IUDPTransport``.

    Made by :meth:`FakeUDPReactor.listenUDP`; behaves like ``twisted.internet.udp.Port``
    on Linux except where the method docstrings say otherwise.

    :ivar protocol: the ``DatagramProtocol`` served by this port.
    :ivar interface: the interface string passed to ``listenUDP``.
    :ivar port: the port number requested (0 for an ephemeral port; see :meth:`getHost`
        for the bound one).
    :ivar maxPacketSize: received datagrams are truncated to this many bytes.
    :ivar addressFamily: ``socket.AF_INET`` or ``socket.AF_INET6``.
    :ivar listening: true between ``startListening`` and ``stopListening``.
    :ivar destination: while ``datagramReceived`` runs, where that datagram was sent
        (as :class:`netsvc.udpport.ListeningUDPPort` reports it): a broadcast one is
        marked so.
    """

    def __init__(
        self,
        reactor: FakeUDPReactor,
        port: int,
        protocol: DatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,
    ) -> None:
        self.reactor = reactor
        self.port = port
        self.protocol = protocol
        self.interface = interface
        self.maxPacketSize = maxPacketSize
        self.listening = False
        self._bound_port: int | None = None
        self._bind_order = 0
        self._broadcast_allowed = False
        self._connected_addr: _Address | None = None
        self._connected_peer: tuple[_IP, int] | None = None
        self._write_fault: _WriteFault | None = None
        self.destination: Destination | None = None
        self.addressFamily: socket.AddressFamily
        self._host: str  # what getsockname() would show
        self._scope: _Scope
        # Same order and error as twisted.internet.udp.Port._setAddressFamily.
        if interface == "":
            self.addressFamily, self._host = socket.AF_INET, "0.0.0.0"
            self._scope = _Scope(any_v4=True, any_v6=False, ip=None)
            return
        ip = _parse_ip(interface)
        if ip is None:
            raise InvalidAddressError(interface, "not an IPv4 or IPv6 address.")
        self._host = str(ip)
        plain = _unmap(ip)
        if isinstance(ip, ipaddress.IPv6Address):
            self.addressFamily = socket.AF_INET6
            if plain.is_unspecified:  # '::' is dual-stack; '::ffff:0.0.0.0' is IPv4 only
                self._scope = _Scope(any_v4=True, any_v6=plain is ip, ip=None)
            else:
                self._scope = _Scope(any_v4=False, any_v6=False, ip=plain)
            if plain is not ip:
                self._host = _show(plain, socket.AF_INET6)
        else:
            self.addressFamily = socket.AF_INET
            wildcard = ip.is_unspecified
            self._scope = _Scope(any_v4=wildcard, any_v6=False, ip=None if wildcard else ip)

    def __repr__(self) -> str:
        where = f"on {self._bound_port}" if self.listening else "not listening"
        return f"<{type(self).__name__} {type(self.protocol).__name__} {where}>"

    def logPrefix(self) -> str:
        """Prefix for log messages, as Twisted's UDP port builds it."""
        return f"{type(self.protocol).__name__} (UDP)"

    # IListeningPort

    def startListening(self) -> None:
        """Bind (``listenUDP`` already did) and connect the protocol to this port.

        :raises CannotListenError: the (interface, port) overlaps a bound port.
        :raises OverflowError: the port number is outside 0..65535.
        :raises RuntimeError: the port is already listening.
        """
        if self.listening:
            raise RuntimeError(f"{self!r} is already listening")
        self.reactor._bind(self)
        self.listening = True
        self.protocol.makeConnection(self)

    def stopListening(self) -> Deferred[None]:
        """Unbind now and call ``protocol.doStop()`` (so ``stopProtocol``).

        Unlike Twisted, which finishes on the next reactor iteration, everything happens
        synchronously and the returned Deferred has already fired.  Datagrams still in
        flight to this port are dropped on arrival.  Calling it again is harmless.
        """
        if self.listening:
            self.listening = False
            self.reactor._unbind(self)
            self._connected_addr = self._connected_peer = None
            self.protocol.doStop()  # type: ignore[no-untyped-call]
        return succeed(None)

    def loseConnection(self) -> None:
        """Deprecated alias of :meth:`stopListening` (warns, as Twisted does)."""
        warnings.warn(
            "Please use stopListening() to disconnect port", DeprecationWarning, stacklevel=2
        )
        self.stopListening()

    def getHost(self) -> IPv4Address | IPv6Address:
        """The bound address: ``IPv4Address('UDP', ...)`` or ``IPv6Address('UDP', ...)``.

        The host is shown as ``getsockname()`` would (``'0.0.0.0'`` for ``''``, ``'::'``);
        the port is the bound number, also for port 0 (the last one if stopped).
        """
        number = self._bound_port if self._bound_port is not None else self.port
        if self.addressFamily == socket.AF_INET6:
            return IPv6Address("UDP", self._host, number)
        return IPv4Address("UDP", self._host, number)

    def getHandle(self) -> object:
        """There is no socket behind a fake port.

        :raises NotImplementedError: always.
        """
        raise NotImplementedError("FakeUDPPort has no socket")

    # IUDPTransport

    def write(self, datagram: bytes, addr: _Address | None = None) -> None:
        """Send ``datagram`` to ``addr`` (or to the connected peer, ``addr`` then optional).

        Raises what ``twisted.internet.udp.Port.write`` raises over a Linux socket: an
        ``AssertionError`` for a missing ``addr`` (or one other than the connected peer),
        ``InvalidAddressError`` for a host name or the wrong address family,
        ``MessageLengthError`` for an oversized datagram, ``TypeError`` for ``str`` data,
        ``OverflowError`` for a port number outside 0..65535, ``PermissionError``
        (``EACCES``) for a broadcast without :meth:`setBroadcastAllowed`, and any
        ``OSError`` injected with :meth:`FakeUDPReactor.fail_writes`.  As in Twisted, an
        injected ``EINTR`` is retried and ``ECONNREFUSED`` calls
        ``protocol.connectionRefused()`` on a connected port and is ignored otherwise.

        :raises RuntimeError: the port is not listening (Twisted fails there too).
        """
        if not self.listening:
            raise RuntimeError(f"write() on {self!r}")
        if self._connected_addr is not None:
            if addr is not None and addr != self._connected_addr:
                raise AssertionError(f"{addr!r} is not the connected address")
            target = self._connected_addr
        else:
            if addr is None:
                raise AssertionError("write() needs an address on an unconnected port")
            self._check_destination(addr)
            target = addr
        while True:
            try:
                self.reactor._send(self, datagram, target)
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                if e.errno == errno.EMSGSIZE:
                    raise MessageLengthError("message too long") from e
                if e.errno == errno.ECONNREFUSED:
                    if self._connected_addr is not None:
                        self.protocol.connectionRefused()  # type: ignore[no-untyped-call]
                    return
                raise
            return

    def writeSequence(self, seq: Iterable[bytes], addr: _Address | None = None) -> None:
        """Write the concatenation of ``seq`` as one datagram."""
        self.write(b"".join(seq), addr)

    def connect(self, host: str, port: int) -> None:
        """Only talk to ``(host, port)`` from now on, like ``connect()`` on a UDP socket.

        Writes then need no address, datagrams from any other source are discarded, and a
        datagram that reaches an address nobody listens on makes the fake call
        ``protocol.connectionRefused()`` when it arrives (Linux reports the ICMP port
        unreachable to connected sockets only).

        :raises RuntimeError: already connected (as in Twisted), or not listening.
        :raises InvalidAddressError: ``host`` is not an IP literal.
        :raises socket.gaierror: ``host`` is of the other address family.
        :raises PermissionError: ``host`` is a broadcast address and broadcast is not allowed.
        """
        if self._connected_addr is not None:
            raise RuntimeError("already connected, reconnecting is not currently supported")
        ip = _parse_ip(host) if isinstance(host, str) else None
        if ip is None:
            raise InvalidAddressError(host, "not an IPv4 or IPv6 address.")
        if not self.listening:
            raise RuntimeError(f"connect() on {self!r}")
        self._check_family(ip)
        _check_port_number(port, "connect")
        peer = _unmap(ip)
        if self.reactor._is_broadcast(peer) and not self._broadcast_allowed:
            raise _oserror(errno.EACCES)
        self._connected_addr = (host, port)
        self._connected_peer = (peer, port)

    def setBroadcastAllowed(self, enabled: bool) -> None:
        """Allow or forbid sending to broadcast addresses (``SO_BROADCAST``); off by default."""
        self._broadcast_allowed = bool(enabled)

    def getBroadcastAllowed(self) -> bool:
        """Whether this port may send to broadcast addresses."""
        return self._broadcast_allowed

    # helpers

    def _check_family(self, ip: _IP) -> None:
        if isinstance(ip, ipaddress.IPv6Address) != (self.addressFamily == socket.AF_INET6):
            raise socket.gaierror(
                socket.EAI_ADDRFAMILY, "Address family for hostname not supported"
            )

    def _check_destination(self, addr: _Address) -> None:
        """The checks ``twisted.internet.udp.Port.write`` makes before ``sendto``."""
        if not isinstance(addr, tuple) or len(addr) != 2:
            raise TypeError(f"address must be a (host, port) tuple, not {addr!r}")
        host = addr[0]
        if not isinstance(host, str):
            raise TypeError(f"host must be a str, not {type(host).__name__}")
        v4 = abstract.isIPAddress(host)
        v6 = abstract.isIPv6Address(host)
        if not v4 and not v6 and host != "<broadcast>":
            raise InvalidAddressError(host, "write() only accepts IP addresses, not hostnames")
        if (v4 or host == "<broadcast>") and self.addressFamily == socket.AF_INET6:
            raise InvalidAddressError(
                host, "IPv6 port write() called with IPv4 or broadcast address"
            )
        if v6 and self.addressFamily == socket.AF_INET:
            raise InvalidAddressError(host, "IPv4 port write() called with IPv6 address")

    def _source_for(self, dst: _IP) -> _IP:
        """The source address the kernel would pick for a datagram to (unmapped) ``dst``."""
        scope = self._scope
        if scope.ip is not None:
            if type(scope.ip) is not type(dst):
                raise _oserror(errno.ENETUNREACH)
            return scope.ip
        if isinstance(dst, ipaddress.IPv4Address):
            return self.reactor._source_v4
        if not scope.any_v6:
            raise _oserror(errno.ENETUNREACH)
        return self.reactor._source_v6

    def _take_fault(self) -> int | None:
        """Consume one injected failure of this port, if any; its errno."""
        fault = self._write_fault
        if fault is None:
            return None
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._write_fault = None
        return fault.errno_value


# --------------------------------------------------------------------------- reactor


@implementer(IReactorUDP)
class FakeUDPReactor(MemoryReactorClock):
    """A ``MemoryReactorClock`` with working, in-memory ``listenUDP``.

    :param conditions: the default :class:`LinkConditions` for every direction without a
        :meth:`set_link` override (also settable later as ``reactor.conditions``).
    :param seed: seeds the ``random.Random`` behind every loss, duplication, jitter and
        reordering decision: same seed and same traffic, same trace.
    :param record: append a :class:`SentDatagram` to ``reactor.sent`` for every write.
    :param reuse_address: behave as if every port set ``SO_REUSEADDR`` (what
        ``listenMulticast(listenMultiple=True)`` does): overlapping binds are allowed, a
        unicast datagram goes to the most specific, most recently bound port, a broadcast
        to all of them.  Use it to put several broadcast listeners on one port number.
    :param source_address_v4: the source of datagrams sent by wildcard-bound ports to IPv4
        destinations.
    :param source_address_v6: the same for IPv6 destinations (from ``'::'`` ports).
    :param raise_protocol_errors: if true (the default) an exception raised by a protocol's
        ``datagramReceived`` propagates out of ``advance``/``pump``/``run_until`` so the test
        fails loudly; if false it is only logged, as Twisted's real port does.  Either way it
        is appended to ``reactor.protocol_errors``.

    :ivar conditions: the default link conditions.
    :ivar stats: a :class:`DatagramStats`.
    :ivar sent: the recorded :class:`SentDatagram` list (empty unless ``record``).
    :ivar protocol_errors: ``Failure`` objects of exceptions raised by ``datagramReceived``.
    :ivar max_calls_per_advance: bound on the calls one ``advance()`` may run before it
        raises :class:`PumpLimitError` instead of spinning forever.
    """

    _log = Logger()

    def __init__(
        self,
        conditions: LinkConditions = PERFECT_LINK,
        seed: int = 0,
        *,
        record: bool = False,
        reuse_address: bool = False,
        source_address_v4: str = "127.0.0.1",
        source_address_v6: str = "::1",
        raise_protocol_errors: bool = True,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.conditions = conditions
        self.seed = seed
        self.record = record
        self.reuse_address = reuse_address
        self.raise_protocol_errors = raise_protocol_errors
        self.max_calls_per_advance = 1_000_000
        self.stats = DatagramStats()
        self.sent: list[SentDatagram] = []
        self.protocol_errors: list[Failure] = []
        self._random = random.Random(seed)
        self._links: dict[tuple[_IP, _IP], LinkConditions] = {}
        self._broadcast: set[ipaddress.IPv4Address] = {ipaddress.IPv4Address("127.255.255.255")}
        self._bindings: dict[int, list[FakeUDPPort]] = {}
        self._bind_counter = 0
        self._next_ephemeral = EPHEMERAL_PORT_RANGE[0]
        self._write_fault: _WriteFault | None = None
        self._calls_unsorted = False
        self._source_v4: _IP = ipaddress.IPv4Address("127.0.0.1")
        self._source_v6: _IP = ipaddress.IPv6Address("::1")
        self.source_address_v4 = source_address_v4
        self.source_address_v6 = source_address_v6

    # ------------------------------------------------------------------ configuration

    @property
    def source_address_v4(self) -> str:
        """Source address of IPv4 datagrams sent by wildcard-bound ports."""
        return str(self._source_v4)

    @source_address_v4.setter
    def source_address_v4(self, host: str) -> None:
        ip = _parse_ip(host)
        if ip is None or isinstance(_unmap(ip), ipaddress.IPv6Address):
            raise ValueError(f"not an IPv4 address: {host!r}")
        self._source_v4 = _unmap(ip)

    @property
    def source_address_v6(self) -> str:
        """Source address of IPv6 datagrams sent by wildcard-bound (``'::'``) ports."""
        return str(self._source_v6)

    @source_address_v6.setter
    def source_address_v6(self, host: str) -> None:
        ip = _parse_ip(host)
        if ip is None or isinstance(_unmap(ip), ipaddress.IPv4Address):
            raise ValueError(f"not an IPv6 address: {host!r}")
        self._source_v6 = ip

    def set_link(self, src_host: str, dst_host: str, conditions: LinkConditions | None) -> None:
        """Use ``conditions`` for datagrams from ``src_host`` to ``dst_host`` (one direction).

        Hosts are the source address as the kernel would pick it (a wildcard-bound port sends
        from ``source_address_v4``/``_v6``) and the destination as written (the broadcast
        address for a broadcast); ``'::ffff:a.b.c.d'`` and ``'a.b.c.d'`` are the same host.
        ``None`` removes the override.
        """
        key = (self._host_key(src_host), self._host_key(dst_host))
        if conditions is None:
            self._links.pop(key, None)
        else:
            self._links[key] = conditions

    def conditions_for(self, src_host: str, dst_host: str) -> LinkConditions:
        """The conditions used from ``src_host`` to ``dst_host`` (override or default)."""
        return self._conditions(self._host_key(src_host), self._host_key(dst_host))

    def add_broadcast_address(self, address: str) -> None:
        """Treat IPv4 ``address`` as a broadcast address (``127.255.255.255`` is preset;
        ``255.255.255.255`` always is one)."""
        self._broadcast.add(self._broadcast_key(address))

    def remove_broadcast_address(self, address: str) -> None:
        """Stop treating ``address`` as a broadcast address."""
        self._broadcast.discard(self._broadcast_key(address))

    @property
    def broadcast_addresses(self) -> frozenset[str]:
        """The configured broadcast addresses (``255.255.255.255`` is implied)."""
        return frozenset(str(ip) for ip in self._broadcast)

    def fail_writes(
        self, errno_value: int, count: int | None = None, port: FakeUDPPort | None = None
    ) -> None:
        """Make the next ``count`` writes (all, until cleared, if ``None``) raise
        ``OSError(errno_value, ...)``, on ``port`` only or, if ``port`` is ``None``, on every
        port of this reactor.

        Only writes that pass every other check fail, and a failed write sends nothing.
        A port's own failures are consumed before the reactor-wide ones.  ``EMSGSIZE`` and
        ``ECONNREFUSED`` get Twisted's translation (see :meth:`FakeUDPPort.write`).

        :raises ValueError: ``count`` below 1, or ``EINTR`` without a ``count`` (Twisted
            retries ``EINTR`` forever).
        """
        if count is not None and count < 1:
            raise ValueError(f"count must be at least 1 (or None), not {count!r}")
        if errno_value == errno.EINTR and count is None:
            raise ValueError("an endless EINTR would make write() retry forever")
        fault = _WriteFault(errno_value, count)
        if port is None:
            self._write_fault = fault
        else:
            port._write_fault = fault

    def clear_write_failures(self, port: FakeUDPPort | None = None) -> None:
        """Forget injected write failures: of ``port`` only, or all of them."""
        if port is not None:
            port._write_fault = None
            return
        self._write_fault = None
        for bound in self._bindings.values():
            for each in bound:
                each._write_fault = None

    @property
    def udp_ports(self) -> list[FakeUDPPort]:
        """The ports listening now, in bind order."""
        ports = [port for bound in self._bindings.values() for port in bound]
        return sorted(ports, key=lambda port: port._bind_order)

    # ------------------------------------------------------------------ IReactorUDP

    def listenUDP(
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,
    ) -> FakeUDPPort:
        """Bind ``protocol`` to UDP ``port`` on ``interface`` and start it, like Twisted.

        ``''``/``'0.0.0.0'`` receive every IPv4 destination, ``'::'`` every IPv4 and IPv6
        one, another address only datagrams sent to it.  Port 0 picks a free number from
        :data:`EPHEMERAL_PORT_RANGE` (upwards, wrapping).  ``protocol.makeConnection(port)``
        runs ``doStart``/``startProtocol`` before this returns.

        :raises InvalidAddressError: ``interface`` is not an IP literal.
        :raises CannotListenError: the (interface, port) overlaps a bound port.
        :raises OverflowError: ``port`` is outside 0..65535.
        """
        udp_port = FakeUDPPort(self, port, protocol, interface, maxPacketSize)
        udp_port.startListening()
        return udp_port

    # ------------------------------------------------------------------ clock

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> IDelayedCall:
        """``Clock.callLater`` without re-sorting every pending call (fast with thousands of
        datagrams in flight); same ordering: by time, then first scheduled first."""
        call = DelayedCall(
            self.seconds() + delay,
            callable,
            args,
            kw,
            self.calls.remove,
            self._call_moved_earlier,
            self.seconds,
        )
        if self._calls_unsorted:
            self.calls.append(call)
        else:
            bisect.insort_right(self.calls, call, key=_call_time)
        return call

    def advance(self, amount: float) -> None:
        """Move the clock forward by ``amount`` seconds and run every call due by then.

        Like ``Clock.advance`` (calls scheduled for "now" by those calls run too), but it
        raises :class:`PumpLimitError` after ``max_calls_per_advance`` calls instead of
        looping forever.
        """
        self.rightNow += amount
        self._run_due(self.max_calls_per_advance)

    def pump(self, timings: Iterable[float] | None = None, max_steps: int = 10_000) -> None:
        """Run everything due now, including what that schedules for now, without moving
        the clock; or, given ``timings``, ``advance()`` by each amount as ``Clock.pump`` does.

        :raises PumpLimitError: still something due after ``max_steps`` calls.
        """
        if timings is not None:
            for amount in timings:
                self.advance(amount)
            return
        self._run_due(max_steps)

    def run_until(
        self,
        predicate: Callable[[], object],
        timeout: float,
        step: float | None = None,
        max_steps: int = 100_000,
    ) -> bool:
        """Advance the simulated clock until ``predicate()`` is true; whether it became true.

        The clock jumps to the next scheduled call (or moves by ``step`` seconds, if given)
        and runs what is due, checking ``predicate`` after each instant, until it holds or
        ``timeout`` simulated seconds have passed (the clock then stands at the deadline).
        ``predicate`` is checked before anything runs, too.

        :raises PumpLimitError: more than ``max_steps`` calls ran.
        :raises ValueError: negative or non-finite ``timeout``, or ``step`` not above 0.
        """
        if not (math.isfinite(timeout) and timeout >= 0):
            raise ValueError(f"timeout must be finite and >= 0, not {timeout!r}")
        if step is not None and not (math.isfinite(step) and step > 0):
            raise ValueError(f"step must be finite and > 0, not {step!r}")
        deadline = self.rightNow + timeout
        budget = max_steps
        while True:
            budget -= self._run_due(budget)
            if predicate():
                return True
            if self.rightNow >= deadline:
                return False
            if step is not None:
                target = self.rightNow + step
            else:
                upcoming = self._next_call_time()
                target = deadline if upcoming is None else upcoming
            self.rightNow = min(max(target, self.rightNow), deadline)

    def _call_moved_earlier(self, call: DelayedCall) -> None:
        # DelayedCall.reset()/delay() report only moves to an earlier time; later moves only
        # grow delayed_time and are handled lazily when the call comes due (as the reactor
        # does).
        self._calls_unsorted = True

    def _head(self) -> DelayedCall | None:
        """The earliest pending call, with lazily postponed calls put back in place."""
        calls = self.calls
        while calls:
            if self._calls_unsorted:
                calls.sort(key=_call_time)
                self._calls_unsorted = False
            head = calls[0]
            if head.delayed_time:
                calls.pop(0)
                head.activate_delay()
                bisect.insort_right(calls, head, key=_call_time)
                continue
            return head
        return None

    def _next_call_time(self) -> float | None:
        head = self._head()
        return None if head is None else head.time

    def _run_due(self, max_steps: int) -> int:
        """Run calls due now, one by one, at most ``max_steps``; how many ran."""
        ran = 0
        while True:
            head = self._head()
            if head is None or head.time > self.rightNow:
                return ran
            if ran >= max_steps:
                raise PumpLimitError(
                    f"still calls due at t={self.rightNow} after {ran} calls"
                    " (two protocols answering each other without delay?)"
                )
            self.calls.pop(0)
            head.called = 1
            head.func(*head.args, **head.kw)
            ran += 1

    # ------------------------------------------------------------------ datagram plumbing

    @staticmethod
    def _host_key(host: str) -> _IP:
        ip = _parse_ip(host)
        if ip is None:
            raise InvalidAddressError(host, "not an IPv4 or IPv6 address.")
        return _unmap(ip)

    @classmethod
    def _broadcast_key(cls, address: str) -> ipaddress.IPv4Address:
        ip = cls._host_key(address)
        if not isinstance(ip, ipaddress.IPv4Address):
            raise ValueError(f"broadcast addresses are IPv4, not {address!r}")
        return ip

    def _is_broadcast(self, ip: _IP) -> bool:
        return ip == _LIMITED_BROADCAST or ip in self._broadcast

    def _conditions(self, src: _IP, dst: _IP) -> LinkConditions:
        return self._links.get((src, dst), self.conditions)

    def _bind(self, port: FakeUDPPort) -> None:
        requested = _check_port_number(port.port, "bind")
        if requested == 0:
            number = self._allocate(port)
        else:
            number = requested
            if not self.reuse_address and any(
                other._scope.overlaps(port._scope) for other in self._bindings.get(number, ())
            ):
                raise CannotListenError(port.interface, number, _oserror(errno.EADDRINUSE))
        self._bind_counter += 1
        port._bind_order = self._bind_counter
        port._bound_port = number
        self._bindings.setdefault(number, []).append(port)

    def _allocate(self, port: FakeUDPPort) -> int:
        low, high = EPHEMERAL_PORT_RANGE
        span = high - low + 1
        start = self._next_ephemeral - low
        for offset in range(span):
            number = low + (start + offset) % span
            if number not in self._bindings:
                self._next_ephemeral = low + (number - low + 1) % span
                return number
        raise CannotListenError(port.interface, 0, _oserror(errno.EADDRINUSE))

    def _unbind(self, port: FakeUDPPort) -> None:
        number = port._bound_port
        bound = self._bindings.get(number) if number is not None else None
        if bound is not None and port in bound:
            bound.remove(port)
            if not bound:
                del self._bindings[number]  # type: ignore[arg-type]  # not None here

    def _receiver(self, dst: _IP, number: int) -> FakeUDPPort | None:
        """The port that gets a unicast datagram: most specific, then same family, then
        most recently bound (only the first rule matters without ``reuse_address``)."""
        best: FakeUDPPort | None = None
        best_rank = (-1, -1, -1)
        for port in self._bindings.get(number, ()):
            if not port._scope.accepts(dst):
                continue
            same_family = (port.addressFamily == socket.AF_INET6) == isinstance(
                dst, ipaddress.IPv6Address
            )
            rank = (int(port._scope.ip is not None), int(same_family), port._bind_order)
            if rank > best_rank:
                best, best_rank = port, rank
        return best

    def _broadcast_receivers(self, dst: ipaddress.IPv4Address, number: int) -> list[FakeUDPPort]:
        return [
            port
            for port in self._bindings.get(number, ())
            if (port._scope.ip is None and port._scope.any_v4) or port._scope.ip == dst
        ]

    def _send(self, port: FakeUDPPort, datagram: bytes, target: _Address) -> None:
        """The "kernel" half of a write: checks, faults, then scheduling the arrivals."""
        if not isinstance(datagram, bytes | bytearray | memoryview):
            raise TypeError(f"a bytes-like object is required, not '{type(datagram).__name__}'")
        data = bytes(datagram)
        host, number = target
        number = _check_port_number(number, "sendto")
        parsed = _LIMITED_BROADCAST if host == "<broadcast>" else _parse_ip(host)
        if parsed is None:  # only reachable through connect(), which checked already
            raise InvalidAddressError(host, "not an IPv4 or IPv6 address.")
        dst = _unmap(parsed)
        src = port._source_for(dst)
        if dst.is_unspecified:  # Linux sends to 0.0.0.0 / :: as to the source address
            dst = src
        if number == 0:
            raise _oserror(errno.EINVAL)
        limit = MAX_UDP_PAYLOAD_IPV4 if dst.version == 4 else MAX_UDP_PAYLOAD_IPV6
        if len(data) > limit:
            raise _oserror(errno.EMSGSIZE)
        broadcast = self._is_broadcast(dst)
        if broadcast and not port._broadcast_allowed:
            raise _oserror(errno.EACCES)
        fault = port._take_fault()
        if fault is None:
            fault = self._take_fault()
        if fault is not None:
            raise _oserror(fault)

        assert port._bound_port is not None
        src_port = port._bound_port
        self.stats.sent += 1
        if self.record:
            self.sent.append(
                SentDatagram(
                    (_show(src, port.addressFamily), src_port), target, data, self.seconds()
                )
            )
        conditions = self._conditions(src, dst)
        if broadcast:
            assert isinstance(dst, ipaddress.IPv4Address)
            receivers = self._broadcast_receivers(dst, number)
            if not receivers:
                self.stats.undeliverable += 1
            for receiver in receivers:
                for delay in self._fate(conditions):
                    self.callLater(delay, self._deliver, receiver, data, src, src_port, dst)
        else:
            for delay in self._fate(conditions):
                self.callLater(delay, self._arrive, port, data, src, src_port, dst, number)

    def _take_fault(self) -> int | None:
        fault = self._write_fault
        if fault is None:
            return None
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._write_fault = None
        return fault.errno_value

    def _fate(self, conditions: LinkConditions) -> list[float]:
        """Delays of the copies that will arrive (empty if lost).  Always draws the same
        number of random values for the same outcome, so traces are reproducible."""
        rng = self._random
        lost = rng.random() < conditions.loss
        duplicated = rng.random() < conditions.duplicate
        if lost:
            self.stats.lost += 1
            return []
        if duplicated:
            self.stats.duplicated += 1
        delays = []
        for _ in range(2 if duplicated else 1):
            delay = conditions.delay + rng.uniform(0.0, conditions.jitter)
            if rng.random() < conditions.reorder:
                delay += conditions.reorder_delay
            delays.append(delay)
        return delays

    def _arrive(
        self, sender: FakeUDPPort, data: bytes, src: _IP, src_port: int, dst: _IP, number: int
    ) -> None:
        """A unicast datagram reaches its destination address: find who listens now."""
        receiver = self._receiver(dst, number)
        if receiver is not None:
            self._deliver(receiver, data, src, src_port, dst)
            return
        self.stats.undeliverable += 1
        # ICMP port unreachable: reported to connected sockets only (Linux, Twisted).
        if sender.listening and sender._connected_peer == (dst, number):
            sender.protocol.connectionRefused()  # type: ignore[no-untyped-call]

    def _deliver(
        self, receiver: FakeUDPPort, data: bytes, src: _IP, src_port: int, dst: _IP
    ) -> None:
        if not receiver.listening or (
            receiver._connected_peer is not None and receiver._connected_peer != (src, src_port)
        ):
            self.stats.undeliverable += 1
            return
        if len(data) > receiver.maxPacketSize:
            data = data[: max(receiver.maxPacketSize, 0)]
            self.stats.truncated += 1
        self.stats.delivered += 1
        addr = (_show(src, receiver.addressFamily), src_port)
        written = _show(dst, receiver.addressFamily)
        receiver.destination = (
            Destination(written, "", True)
            if self._is_broadcast(dst)
            else Destination.classify(written)
        )
        try:
            receiver.protocol.datagramReceived(data, addr)
        except Exception:
            failure = Failure()  # type: ignore[no-untyped-call]
            self.protocol_errors.append(failure)
            self._log.failure(
                "{protocol!r} raised in datagramReceived", failure, protocol=receiver.protocol
            )
            if self.raise_protocol_errors:
                raise


def _call_time(call: DelayedCall) -> float:
    # Sort on the scheduled time without lazy postponements, as the real reactor does.
    return call.time


# --------------------------------------------------------------------------- helpers


class RecordingDatagramProtocol(DatagramProtocol):
    """A ``DatagramProtocol`` that remembers what happens to it, for assertions.

    :ivar received: every ``(datagram, addr)`` received, in order.
    :ivar refused: how many times ``connectionRefused()`` was called.
    :ivar started: ``startProtocol()`` calls.
    :ivar stopped: ``stopProtocol()`` calls.
    """

    noisy = False

    def __init__(self) -> None:
        self.received: list[tuple[bytes, _Address]] = []
        self.refused = 0
        self.started = 0
        self.stopped = 0

    @property
    def datagrams(self) -> list[bytes]:
        """Just the payloads of :attr:`received`."""
        return [datagram for datagram, _ in self.received]

    def startProtocol(self) -> None:
        self.started += 1

    def stopProtocol(self) -> None:
        self.stopped += 1

    def datagramReceived(self, datagram: bytes, addr: _Address) -> None:
        self.received.append((datagram, addr))

    def connectionRefused(self) -> None:
        self.refused += 1


class BlockingChannel(DatagramProtocol):
    """A :class:`netsvc.tftp.blocking.Channel` on a :class:`FakeUDPReactor`.

    Code written for blocking sockets (the blocking TFTP client) runs on the fake network
    with it: :meth:`receive` moves the simulated clock (``run_until``) until a datagram
    arrives or the timeout passes, so whatever else listens on the reactor (a server)
    runs meanwhile. Pass ``reactor.seconds`` as that code's clock.
    """

    noisy = False

    def __init__(self, reactor: FakeUDPReactor, interface: str = "") -> None:
        self.reactor = reactor
        self.inbox: list[tuple[bytes, tuple[str, int]]] = []
        self.port = reactor.listenUDP(0, self, interface, MAX_UDP_PAYLOAD_IPV6)

    def datagramReceived(self, datagram: bytes, addr: _Address) -> None:
        self.inbox.append((datagram, (addr[0], addr[1])))

    def sender(self, address: tuple[str, int]) -> Callable[[bytes], None]:
        def send(datagram: bytes) -> None:
            try:  # noqa: SIM105 (as the real channel: a failed send is a lost datagram)
                self.port.write(datagram, address)
            except OSError:
                pass

        return send

    def receive(self, timeout: float) -> tuple[bytes, tuple[str, int]] | None:
        inbox = self.inbox
        if not inbox:
            self.reactor.run_until(lambda: bool(inbox), max(0.0, timeout))
        return inbox.pop(0) if inbox else None

    def expect(self, largest: int, burst: int) -> None:
        self.port.maxPacketSize = largest

    def close(self) -> None:
        self.port.stopListening()

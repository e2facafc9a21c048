"""Twisted adapters: the broadcast node (listener, responder, announcer) and discovery.

A *node* owns one UDP socket on the shared discovery port (several nodes on one host
coexist: the port is opened with ``SO_REUSEADDR``/``SO_REUSEPORT`` through
``listenMulticast(..., listenMultiple=True)``; every socket gets each broadcast). It

* keeps a :class:`~netsvc.broadcast.peers.PeerTable` from the announcements it hears,
  ignoring its own (node id) and bounding sizes and rates;
* optionally answers discovery queries, by unicast, rate-limited per source and in total,
  never with a reply longer than the query, never to its own queries, to non-queries, to
  broadcast/multicast sources or to the ports of other reflecting services;
* optionally announces itself every ``interval`` seconds (a ``LoopingCall`` on the
  injected reactor) to the directed broadcast address of each chosen interface.

:func:`discover` is the querying side: broadcast one small query, collect replies.
Nothing here logs per datagram: counters live in :class:`BroadcastStats` and a summary
is logged at most once a minute.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import attrs
from twisted.application.service import IService, Service
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorMulticast,
    IReactorTime,
    IReactorUDP,
)
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from netsvc.broadcast.interfaces import BroadcastTarget, TargetSpec
from netsvc.broadcast.peers import Peer, PeerTable, Update
from netsvc.broadcast.wire import (
    MAX_MESSAGE_SIZE,
    MAX_SERVICES,
    NODE_ID_SIZE,
    Announcement,
    NodeInfo,
    Query,
    Reply,
    ServiceEntry,
    WireError,
    check_service_name,
    decode,
    encode,
    fit_info,
    is_candidate,
    sender_id,
)
from netsvc.echo import REFLECTOR_PORTS, is_unanswerable_source
from netsvc.listening import ListenGroup, UDPListenService, _ListenService
from netsvc.ratelimit import NEVER, Admission, PerKeyRateLimiter, TokenBucket

__all__ = [
    "DEFAULT_LIMITS",
    "DISCOVERY_PORT",
    "MIN_ANNOUNCE_INTERVAL",
    "AnnounceService",
    "BroadcastLimits",
    "BroadcastNode",
    "BroadcastService",
    "BroadcastStats",
    "DiscoveredNode",
    "DiscoveryClient",
    "SharedUDPListenService",
    "broadcast_service",
    "default_node_name",
    "discover",
    "new_node_id",
]

#: Default UDP port of announcements and queries (unassigned by IANA; below Linux's
#: ephemeral range so that no client socket holds it by chance).
DISCOVERY_PORT = 27492
#: The receive buffer: one byte more than any valid message, so an oversized datagram
#: shows up as oversized instead of being silently truncated into a valid-looking one.
_RECEIVE_SIZE = MAX_MESSAGE_SIZE + 1
_SUMMARY_EVERY = 60.0
#: Shortest interval between announcements (seconds): a node is a neighbour on a LAN,
#: where every host receives every broadcast, not a flood.
MIN_ANNOUNCE_INTERVAL = 0.1


def new_node_id() -> bytes:
    """A fresh random node id (8 bytes)."""
    while True:
        node_id = os.urandom(NODE_ID_SIZE)
        if any(node_id):
            return node_id


def default_node_name() -> str:
    """The host name, cut to a valid node name."""
    name = socket.gethostname() or "netsvc"
    while len(name.encode("utf-8")) > 64:
        name = name[:-1]
    return name


@attrs.frozen
class BroadcastLimits:
    """Bounds of a broadcast node (sizes, rates, memory)."""

    #: Nodes kept in the peer table; new nodes are refused beyond it.
    max_peers: int = 1024
    #: Longest time a peer is kept without news, whatever ttl it announces.
    max_ttl: float = 3600.0
    #: Valid-looking datagrams parsed per second per source address (burst: source_burst).
    source_rate: float = 20.0
    source_burst: float = 40.0
    #: Source addresses tracked by the rate limiters (oldest forgotten first).
    max_sources: int = 4096
    #: Replies per second to one source address, and to everyone together.
    reply_rate: float = 2.0
    reply_burst: float = 5.0
    total_reply_rate: float = 50.0
    total_reply_burst: float = 100.0

    def __attrs_post_init__(self) -> None:
        if self.max_peers < 1 or self.max_sources < 1:
            raise ValueError("max_peers and max_sources must be at least 1")
        for name in (
            "max_ttl",
            "source_rate",
            "source_burst",
            "reply_rate",
            "reply_burst",
            "total_reply_rate",
            "total_reply_burst",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


DEFAULT_LIMITS = BroadcastLimits()
_ALL_INTERFACES = TargetSpec()


@attrs.define
class BroadcastStats:
    """Counters of a :class:`BroadcastNode` (assign a new instance to reset)."""

    received: int = 0
    junk: int = 0  # wrong magic or size: not ours at all
    own: int = 0  # our own broadcasts, looped back
    rate_limited: int = 0  # over the per-source parse rate
    malformed: int = 0  # our magic, invalid content
    announcements: int = 0
    peers_refused: int = 0  # table full
    queries: int = 0
    replies: int = 0
    replies_refused: int = 0  # unanswerable source or reflector port
    replies_rate_limited: int = 0
    replies_not_smaller: int = 0  # reply would be longer than the query
    queries_filtered: int = 0  # asked for a service we do not offer
    ignored: int = 0  # valid but not for us (a reply, or a query with respond off)
    announced: int = 0  # announcements sent (one per target)
    send_errors: int = 0

    def dropped(self) -> int:
        return self.junk + self.rate_limited + self.malformed


def _source_class(host: str) -> Admission | None:
    return NEVER if is_unanswerable_source(host) else None


class BroadcastNode(DatagramProtocol):
    """The protocol on the shared discovery port (see the module docstring).

    ``info`` is a :class:`NodeInfo` or a function returning one (called per announcement
    and per reply, so it may reflect services that start later). ``on_peer(update, peer)``
    is called when a node joins, changes or leaves (``"left"``).
    """

    noisy = False
    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        info: NodeInfo | Callable[[], NodeInfo],
        *,
        node_id: bytes | None = None,
        respond: bool = False,
        ttl: int = 30,
        limits: BroadcastLimits = DEFAULT_LIMITS,
        on_peer: Callable[[str, Peer], None] | None = None,
        sweep_interval: float = 1.0,
    ) -> None:
        self.reactor = reactor
        self._info = info if callable(info) else (lambda: info)
        self.node_id = node_id if node_id is not None else new_node_id()
        self.respond = respond
        self.ttl = ttl
        self.limits = limits
        self.on_peer = on_peer
        self.sweep_interval = sweep_interval
        self.table = PeerTable(limits.max_peers, limits.max_ttl)
        self.stats = BroadcastStats()
        self.sequence = 0
        clock = reactor.seconds
        self.sources: PerKeyRateLimiter[str] = PerKeyRateLimiter(
            limits.source_rate, limits.source_burst, clock, limits.max_sources
        )
        self.reply_limiter: PerKeyRateLimiter[str] = PerKeyRateLimiter(
            limits.reply_rate,
            limits.reply_burst,
            clock,
            limits.max_sources,
            classify=_source_class,
        )
        self.total_replies = TokenBucket(limits.total_reply_rate, limits.total_reply_burst, clock())
        self.omitted_services = 0
        self._sweeper: task.LoopingCall | None = None
        self._summarised = BroadcastStats()
        self._summary_at = clock()

    # -- what we say about ourselves -----------------------------------------------------

    def info(self) -> NodeInfo:
        """Our :class:`NodeInfo`, cut to what fits in one message."""
        info, omitted = fit_info(self._info())
        if omitted and omitted != self.omitted_services:
            self.log.warn(
                "broadcast: {omitted} services left out of announcements (message size)",
                omitted=omitted,
            )
        self.omitted_services = omitted
        return info

    def announcement(self, ttl: int | None = None) -> bytes:
        """The next announcement datagram (a new sequence number each time)."""
        self.sequence += 1
        return encode(Announcement(self.node_id, self.sequence, self.info(), ttl or self.ttl))

    def send(self, datagram: bytes, targets: Iterable[str], port: int) -> list[tuple[str, str]]:
        """Write ``datagram`` to each target address; returns ``(target, error)`` failures."""
        failures = []
        transport = self.transport
        if transport is None:
            return [(target, "not listening") for target in targets]
        for target in targets:
            try:
                transport.write(datagram, (target, port))
            except OSError as error:
                self.stats.send_errors += 1
                failures.append((target, getattr(error, "strerror", None) or str(error)))
            else:
                self.stats.announced += 1
        return failures

    # -- life cycle ----------------------------------------------------------------------

    def startProtocol(self) -> None:
        self.transport.setBroadcastAllowed(True)  # type: ignore[union-attr]
        self._sweeper = task.LoopingCall(self.sweep)
        self._sweeper.clock = self.reactor
        self._sweeper.start(self.sweep_interval, now=False)

    def stopProtocol(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None

    def sweep(self) -> None:
        """Expire peers; now and then, log a summary of what was dropped."""
        now = self.reactor.seconds()
        for peer in self.table.expire(now):
            self._peer_event("left", peer)
        if now - self._summary_at >= _SUMMARY_EVERY:
            self._log_summary(now)

    def _log_summary(self, now: float) -> None:
        stats, before = self.stats, self._summarised
        dropped = stats.dropped() - before.dropped()
        refused = (
            stats.replies_rate_limited
            - before.replies_rate_limited
            + stats.replies_refused
            - before.replies_refused
            + stats.peers_refused
            - before.peers_refused
        )
        if dropped or refused:
            self.log.info(
                "broadcast: in {seconds:.0f} s ignored {junk} foreign, {malformed} malformed"
                " and {rate_limited} rate-limited datagrams; refused {refused} replies/peers",
                seconds=now - self._summary_at,
                junk=stats.junk - before.junk,
                malformed=stats.malformed - before.malformed,
                rate_limited=stats.rate_limited - before.rate_limited,
                refused=refused,
            )
        self._summarised = attrs.evolve(stats)
        self._summary_at = now
        self.sources.forget_idle()
        self.reply_limiter.forget_idle()

    def _peer_event(self, what: str, peer: Peer) -> None:
        self.log.info(
            "broadcast: {name} ({node}) at {host} {what}: {services}",
            name=peer.name,
            node=peer.node,
            host=peer.host,
            what=what,
            services=peer.describe_services(),
        )
        if self.on_peer is not None:
            self.on_peer(what, peer)

    # -- receiving -----------------------------------------------------------------------

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        stats = self.stats
        stats.received += 1
        if not is_candidate(datagram):
            stats.junk += 1
            return
        if sender_id(datagram) == self.node_id:
            stats.own += 1
            return
        host, port = addr[0], addr[1]
        if not self.sources.allow(host):
            stats.rate_limited += 1
            return
        try:
            message = decode(datagram)
        except WireError:
            stats.malformed += 1
            return
        if isinstance(message, Announcement):
            stats.announcements += 1
            self._announced(message, host, port)
        elif isinstance(message, Query):
            stats.queries += 1
            self._answer(message, len(datagram), host, port)
        else:
            stats.ignored += 1

    def _announced(self, message: Announcement, host: str, port: int) -> None:
        update = self.table.update(message, host, port, self.reactor.seconds())
        if update is Update.FULL:
            self.stats.peers_refused += 1
        elif update in (Update.JOINED, Update.CHANGED):
            peer = self.table.get(message.node_id)
            assert peer is not None
            self._peer_event(update.value, peer)

    def _answer(self, query: Query, query_size: int, host: str, port: int) -> None:
        stats = self.stats
        if not self.respond:
            stats.ignored += 1
            return
        if port in REFLECTOR_PORTS or is_unanswerable_source(host):
            stats.replies_refused += 1
            return
        info = self.info()
        if query.service is not None and not info.offers(query.service):
            stats.queries_filtered += 1
            return
        reply = encode(Reply(self.node_id, query.nonce, info))
        if len(reply) > query_size:
            stats.replies_not_smaller += 1
            return
        if not self.reply_limiter.allow(host) or not self.total_replies.take(self.reactor.seconds):
            stats.replies_rate_limited += 1
            return
        try:
            self.transport.write(reply, (host, port))  # type: ignore[union-attr]
        except OSError:
            stats.send_errors += 1
            return
        stats.replies += 1


class SharedUDPListenService(UDPListenService):
    """A :class:`UDPListenService` whose port other sockets may share.

    With a reactor providing ``IReactorMulticast`` the socket is opened through
    ``listenMulticast(..., listenMultiple=True)`` (``SO_REUSEADDR`` and ``SO_REUSEPORT``),
    so several nodes on one host receive every broadcast; other reactors (the in-memory
    fake: give it ``reuse_address=True``) get a plain ``listenUDP``.
    """

    def _listen(self) -> IListeningPort:
        reactor: Any = self.reactor
        if IReactorMulticast.providedBy(reactor):
            port = reactor.listenMulticast(
                self.port_number,
                self.protocol,
                self.interface,
                self.max_packet_size,
                listenMultiple=True,
            )
            return cast(IListeningPort, port)
        return UDPListenService._listen(self)


def _check_interval(interval: float) -> None:
    if not MIN_ANNOUNCE_INTERVAL <= interval < math.inf:
        raise ValueError(
            f"interval must be a finite number of seconds from {MIN_ANNOUNCE_INTERVAL},"
            f" got {interval}"
        )


class AnnounceService(Service):
    """Sends ``node``'s announcement every ``interval`` seconds to ``targets()``.

    Targets are resolved at every round, so interfaces that come and go are followed.
    A failing target is logged when it starts and stops failing, not at every round.
    On stop, a last announcement with a 1 s ttl tells listeners the node is leaving.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        node: BroadcastNode,
        targets: Callable[[], Sequence[BroadcastTarget]],
        port: int,
        interval: float,
    ) -> None:
        _check_interval(interval)
        self.reactor = reactor
        self.node = node
        self.targets = targets
        self.port = port
        self.interval = interval
        self.failing: dict[str, str] = {}
        self.last_targets: list[BroadcastTarget] = []
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:
        Service.startService(self)
        self._loop = task.LoopingCall(self.announce)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self.node.transport is not None and self.last_targets:
            self.node.send(
                self.node.announcement(ttl=1), [t.address for t in self.last_targets], self.port
            )

    def announce(self) -> None:
        """One round: resolve the targets and send the announcement to each."""
        try:
            targets = list(self.targets())
        except Exception as error:  # interface enumeration failed: try again next round
            self._report("<interfaces>", f"cannot list interfaces: {error}")
            return
        if [t.address for t in targets] != [t.address for t in self.last_targets]:
            self.log.info(
                "broadcast: announcing every {interval} s to {targets}",
                interval=self.interval,
                targets=", ".join(str(t) for t in targets) or "nobody (no broadcast interface)",
            )
        self.last_targets = targets
        failures = dict(
            self.node.send(self.node.announcement(), [t.address for t in targets], self.port)
        )
        for target, reason in failures.items():
            self._report(target, reason)
        for target in list(self.failing):
            if target not in failures:
                del self.failing[target]
                self.log.info("broadcast: sending to {target} works again", target=target)

    def _report(self, target: str, reason: str) -> None:
        if self.failing.get(target) != reason:
            self.failing[target] = reason
            self.log.warn(
                "broadcast: cannot send to {target}: {reason}", target=target, reason=reason
            )


class BroadcastService(ListenGroup):
    """A node's services: the shared-port listener and, optionally, the announcer."""

    def __init__(self, node: BroadcastNode, listener: SharedUDPListenService) -> None:
        ListenGroup.__init__(self)
        self.node = node
        self.listener = listener
        self.announcer: AnnounceService | None = None
        self.addService(listener)

    @property
    def table(self) -> PeerTable:
        return self.node.table

    def set_announcer(self, announcer: AnnounceService) -> None:
        self.announcer = announcer
        self.addService(announcer)

    def sibling_entries(self) -> list[ServiceEntry]:
        """The listening ports of the services next to this one (``twistd netsvc``)."""
        parent = self.parent
        if parent is None:
            return []
        entries: list[ServiceEntry] = []
        for child in parent:
            if child is self:
                continue
            entries.extend(_listening_entries(child, getattr(child, "name", None)))
        unique = list(dict.fromkeys(entries))
        return unique[:MAX_SERVICES]


def _service_name(text: str | None) -> str | None:
    if not text:
        return None
    candidate = text.split()[-1].lower()
    try:
        return check_service_name(candidate)
    except WireError:
        return None


def _listening_entries(service: IService, name: str | None) -> list[ServiceEntry]:
    found: list[ServiceEntry] = []
    if isinstance(service, _ListenService):
        port = service.port
        label = _service_name(name) or _service_name(getattr(service, "what", None))
        if port is not None and label is not None:
            number = getattr(port.getHost(), "port", None)
            protocol = "udp" if isinstance(service, UDPListenService) else "tcp"
            if isinstance(number, int) and number > 0:
                found.append(ServiceEntry(label, protocol, number))
        return found
    children: Iterable[IService] = service if isinstance(service, Iterable) else ()
    for child in children:
        found.extend(_listening_entries(child, name))
    return found


def broadcast_service(
    reactor: Any,
    *,
    name: str | None = None,
    port: int = DISCOVERY_PORT,
    interface: str = "",
    services: Sequence[ServiceEntry] = (),
    advertise_siblings: bool = True,
    announce: bool = False,
    respond: bool = False,
    interval: float = 10.0,
    ttl: int | None = None,
    targets: TargetSpec | Callable[[], Sequence[BroadcastTarget]] = _ALL_INTERFACES,
    limits: BroadcastLimits = DEFAULT_LIMITS,
    node_id: bytes | None = None,
    on_peer: Callable[[str, Peer], None] | None = None,
) -> BroadcastService:
    """A broadcast node listening on ``interface``:``port`` (shared with other nodes).

    It always keeps a peer table (``service.table``) from the announcements it hears;
    ``announce=True`` sends its own every ``interval`` seconds to ``targets`` (default:
    the directed broadcast address of every non-loopback IPv4 interface), announcing a
    ttl of ``ttl`` seconds (default: three intervals); ``respond=True`` answers
    discovery queries. Advertised services are ``services`` plus, with
    ``advertise_siblings``, the listening ports of the services beside this one in its
    parent (what ``twistd netsvc`` runs). ``reactor`` provides ``IReactorUDP`` (and
    ``IReactorMulticast`` to share the port) and ``IReactorTime``.
    """
    _check_interval(interval)
    if ttl is None:
        ttl = max(1, round(3 * interval))
    node_name = name or default_node_name()
    service: BroadcastService

    def info() -> NodeInfo:
        entries = list(services)
        if advertise_siblings:
            entries.extend(e for e in service.sibling_entries() if e not in entries)
        return NodeInfo(node_name, tuple(entries[:MAX_SERVICES]))

    NodeInfo(node_name)  # validate the name now, not at the first announcement
    node = BroadcastNode(
        reactor,
        info,
        node_id=node_id,
        respond=respond,
        ttl=ttl,
        limits=limits,
        on_peer=on_peer,
    )
    listener = SharedUDPListenService(
        reactor, port, node, interface, max_packet_size=_RECEIVE_SIZE, what="broadcast"
    )
    service = BroadcastService(node, listener)
    if announce:
        resolve = targets.resolve if isinstance(targets, TargetSpec) else targets
        service.set_announcer(AnnounceService(reactor, node, resolve, port, interval))
    return service


# ------------------------------------------------------------------------------ discovery


@attrs.frozen
class DiscoveredNode:
    """A node that answered a query."""

    node_id: bytes
    name: str
    host: str
    port: int
    services: tuple[ServiceEntry, ...]
    #: Seconds from the first query to this node's first reply.
    rtt: float

    @property
    def node(self) -> str:
        return self.node_id.hex()

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "node": self.node,
            "address": self.host,
            "port": self.port,
            "services": [
                {"name": e.name, "protocol": e.protocol, "port": e.port} for e in self.services
            ],
            "rtt_ms": round(self.rtt * 1000, 3),
        }


class DiscoveryClient(DatagramProtocol):
    """Sends one query (``sends`` times, ``spacing`` s apart) and collects the replies.

    ``finished`` fires with the nodes found when :meth:`finish` is called (by
    :func:`discover`'s timer) or as soon as ``max_nodes`` have answered.
    """

    noisy = False

    def __init__(
        self,
        clock: IReactorTime,
        targets: Sequence[str],
        *,
        port: int = DISCOVERY_PORT,
        service: str | None = None,
        node_id: bytes | None = None,
        sends: int = 2,
        spacing: float = 0.2,
        max_nodes: int | None = None,
    ) -> None:
        self.clock = clock
        self.targets = list(targets)
        self.port = port
        self.node_id = node_id if node_id is not None else new_node_id()
        self.query = Query(self.node_id, os.urandom(8), service)
        self.datagram = encode(self.query)
        self.sends = sends
        self.spacing = spacing
        self.max_nodes = max_nodes
        self.found: dict[bytes, DiscoveredNode] = {}
        self.errors: dict[str, str] = {}
        self.finished: Deferred[list[DiscoveredNode]] = Deferred()
        self.started_at: float | None = None
        self._resend: IDelayedCall | None = None
        self._sent = 0

    def startProtocol(self) -> None:
        self.transport.setBroadcastAllowed(True)  # type: ignore[union-attr]
        self.started_at = self.clock.seconds()
        self._send_round()

    def _send_round(self) -> None:
        self._resend = None
        if self.finished.called or self.transport is None:
            return
        self._sent += 1
        for target in self.targets:
            try:
                self.transport.write(self.datagram, (target, self.port))
            except OSError as error:
                self.errors[target] = getattr(error, "strerror", None) or str(error)
        if self.errors and len(self.errors) == len(self.targets):
            self.finish()
            return
        if self._sent < self.sends:
            self._resend = self.clock.callLater(self.spacing, self._send_round)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self.finished.called or not is_candidate(datagram):
            return
        if sender_id(datagram) == self.node_id:
            return  # our own query, looped back by a broadcast
        try:
            message = decode(datagram)
        except WireError:
            return
        if not isinstance(message, Reply) or message.nonce != self.query.nonce:
            return
        if message.node_id in self.found or len(self.found) >= 4096:
            return
        assert self.started_at is not None
        self.found[message.node_id] = DiscoveredNode(
            message.node_id,
            message.info.name,
            addr[0],
            addr[1],
            message.info.services,
            self.clock.seconds() - self.started_at,
        )
        if self.max_nodes is not None and len(self.found) >= self.max_nodes:
            self.finish()

    def finish(self) -> None:
        """Stop listening for replies and fire :attr:`finished` (idempotent)."""
        if self._resend is not None and self._resend.active():
            self._resend.cancel()
        self._resend = None
        if not self.finished.called:
            nodes = sorted(self.found.values(), key=lambda n: (n.name, n.host, n.node_id))
            self.finished.callback(nodes)


def discover(
    reactor: Any,
    targets: Sequence[str],
    *,
    port: int = DISCOVERY_PORT,
    timeout: float = 1.0,
    service: str | None = None,
    max_nodes: int | None = None,
    interface: str = "",
    sends: int = 2,
    client: list[DiscoveryClient] | None = None,
) -> Deferred[list[DiscoveredNode]]:
    """Query ``targets`` (broadcast or unicast IPv4 addresses) and collect the answers.

    Fires after ``timeout`` seconds, or as soon as ``max_nodes`` nodes have answered, with
    the nodes found (sorted by name). ``client``, if given, receives the
    :class:`DiscoveryClient` (its ``errors`` say which targets could not be reached).
    Raises (synchronously) what ``listenUDP`` raises.
    """
    protocol = DiscoveryClient(
        reactor, targets, port=port, service=service, max_nodes=max_nodes, sends=sends
    )
    if client is not None:
        client.append(protocol)
    udp: IReactorUDP = reactor
    listening = udp.listenUDP(0, protocol, interface, _RECEIVE_SIZE)
    timer = reactor.callLater(timeout, protocol.finish)

    def done(nodes: list[DiscoveredNode]) -> list[DiscoveredNode]:
        if timer.active():
            timer.cancel()
        listening.stopListening()
        return nodes

    return protocol.finished.addCallback(done)

"""The broadcast node, announcer and discovery on netsvc.testing's in-memory network.

Every node binds the same port on a FakeUDPReactor with ``reuse_address=True`` (what
``listenMulticast(listenMultiple=True)`` gives on a real host); the clock is the
reactor's, so periodic sends and expiry are exact.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

import pytest
from twisted.application.service import MultiService
from twisted.python import usage

from netsvc.broadcast import wire
from netsvc.broadcast.interfaces import BroadcastTarget, TargetSpec
from netsvc.broadcast.peers import Peer
from netsvc.broadcast.service import (
    DEFAULT_LIMITS,
    BroadcastLimits,
    BroadcastService,
    DiscoveredNode,
    broadcast_service,
    discover,
)
from netsvc.broadcast.wire import Announcement, NodeInfo, Query, Reply, ServiceEntry
from netsvc.broadcast_tap import BROADCAST_SPEC, Options, build_broadcast, service_list
from netsvc.echo import echo_service
from netsvc.tapkit import make_suite_service, suite_options
from netsvc.testing import FakeUDPReactor, LinkConditions, RecordingDatagramProtocol

PORT = 27492
LOOP = "127.255.255.255"
TFTP = ServiceEntry("tftp", "udp", 69)


def loopback() -> list[BroadcastTarget]:
    return [BroadcastTarget(LOOP)]


@pytest.fixture
def reactor() -> FakeUDPReactor:
    return FakeUDPReactor(reuse_address=True, record=True)


def node(
    reactor: FakeUDPReactor, name: str, *, announce: bool = False, respond: bool = False,
    services: Sequence[ServiceEntry] = (), limits: BroadcastLimits = DEFAULT_LIMITS,
    interval: float = 10.0, events: list[tuple[str, str]] | None = None, start: bool = True,
) -> BroadcastService:
    def on_peer(what: str, peer: Peer) -> None:
        if events is not None:
            events.append((what, peer.name))

    service = broadcast_service(
        reactor, name=name, port=PORT, services=services, announce=announce,
        respond=respond, interval=interval, targets=loopback, limits=limits, on_peer=on_peer,
    )
    if start:
        service.startService()
    return service


def injector(reactor: FakeUDPReactor, port: int = 0) -> RecordingDatagramProtocol:
    """A raw UDP socket for hand-made datagrams (its replies are recorded)."""
    protocol = RecordingDatagramProtocol()
    udp = reactor.listenUDP(port, protocol)
    udp.setBroadcastAllowed(True)
    return protocol


def test_periodic_announcements_fill_peer_tables(reactor: FakeUDPReactor) -> None:
    events: list[tuple[str, str]] = []
    b = node(reactor, "b", events=events)
    a = node(reactor, "a", announce=True, services=[TFTP])
    reactor.advance(0)
    assert [p.name for p in b.table.peers()] == ["a"]
    assert b.table.peers()[0].services == (TFTP,)
    assert events == [("joined", "a")]
    reactor.pump([10, 10, 10])
    sent = [d for d in reactor.sent if d.src[1] == PORT and d.dst == (LOOP, PORT)]
    assert [d.time for d in sent] == [0, 10, 20, 30]
    assert a.node.stats.announced == 4
    assert a.node.stats.own == 4  # its own broadcasts came back and were ignored
    assert len(a.table) == 0
    assert b.node.stats.announcements == 4
    assert events == [("joined", "a")]  # refreshes are not events


def test_silent_peer_expires_after_its_ttl(reactor: FakeUDPReactor) -> None:
    events: list[tuple[str, str]] = []
    b = node(reactor, "b", events=events)
    a = node(reactor, "a", announce=True, interval=10)  # ttl: three intervals
    reactor.advance(0)
    assert a.announcer is not None and a.announcer._loop is not None
    a.announcer._loop.stop()  # crashes silently: no goodbye
    reactor.advance(29.5)
    assert len(b.table) == 1
    reactor.advance(1)
    assert len(b.table) == 0
    assert events == [("joined", "a"), ("left", "a")]


def test_goodbye_on_stop(reactor: FakeUDPReactor) -> None:
    b = node(reactor, "b")
    a = node(reactor, "a", announce=True)
    reactor.advance(0)
    a.stopService()
    reactor.advance(0)
    assert len(b.table) == 1
    reactor.advance(1)
    assert len(b.table) == 0


def test_announcements_follow_interface_changes(reactor: FakeUDPReactor) -> None:
    current = [[BroadcastTarget(LOOP)], []]
    service = broadcast_service(
        reactor, name="a", port=PORT, announce=True, targets=lambda: current[0]
    )
    service.startService()
    reactor.advance(0)
    assert service.node.stats.announced == 1
    current.pop(0)
    reactor.advance(10)
    assert service.node.stats.announced == 1  # no interface: nothing sent, no crash


def test_send_errors_are_counted_not_fatal(reactor: FakeUDPReactor) -> None:
    a = node(reactor, "a", announce=True, start=False)
    reactor.fail_writes(errno.EPERM, count=2)
    a.startService()
    reactor.advance(10)
    assert a.node.stats.send_errors == 2
    assert a.announcer is not None and LOOP in a.announcer.failing
    reactor.advance(10)
    assert a.node.stats.announced == 1
    assert a.announcer.failing == {}


def test_malformed_and_foreign_datagrams(reactor: FakeUDPReactor) -> None:
    b = node(reactor, "b", respond=True)
    raw = injector(reactor)
    transport = raw.transport
    assert transport is not None
    good = wire.encode(Announcement(b"\x07" * 8, 1, NodeInfo("x"), 30))
    junk = [
        b"", b"x", b"hello world", bytes(600), b"NSVD", good[:30], good + b"\x01",
        b"NSVD\x02" + good[5:], good.replace(b'"ttl":30', b'"ttl":-1'),
        b"NSVD" + bytes(508) + b"!",  # one byte over the limit, our magic
    ]
    for datagram in junk:
        transport.write(datagram, (LOOP, PORT))  # type: ignore[attr-defined]
    reactor.advance(0)
    stats = b.node.stats
    assert stats.received == len(junk)
    assert stats.junk + stats.malformed == len(junk)
    assert stats.malformed >= 4
    assert len(b.table) == 0 and raw.received == []


def test_source_rate_limit_bounds_parsing_and_the_table(reactor: FakeUDPReactor) -> None:
    limits = BroadcastLimits(source_rate=5, source_burst=10, max_peers=1000)
    b = node(reactor, "b", limits=limits)
    raw = injector(reactor)
    for i in range(200):  # 200 forged nodes from one address, at once
        datagram = wire.encode(Announcement(i.to_bytes(8, "big") or b"\x01" * 8, 1,
                                            NodeInfo(f"n{i}"), 30))
        raw.transport.write(datagram, (LOOP, PORT))  # type: ignore[union-attr]
    reactor.advance(0)
    assert b.node.stats.rate_limited == 190
    assert len(b.table) == 10 - 1  # node id 0 is invalid: malformed
    reactor.advance(1)
    assert len(b.table) == 9


def test_table_cap(reactor: FakeUDPReactor) -> None:
    b = node(reactor, "b", limits=BroadcastLimits(max_peers=3))
    raw = injector(reactor)
    for i in range(1, 6):
        raw.transport.write(  # type: ignore[union-attr]
            wire.encode(Announcement(bytes([i]) * 8, 1, NodeInfo(f"n{i}"), 30)), (LOOP, PORT)
        )
    reactor.advance(0)
    assert len(b.table) == 3 and b.node.stats.peers_refused == 2


# ------------------------------------------------------------------------------ discovery


def run_discover(reactor: FakeUDPReactor, **kwargs: object) -> list[DiscoveredNode]:
    found: list[list[DiscoveredNode]] = []
    discover(reactor, [LOOP], port=PORT, **kwargs).addCallback(found.append)  # type: ignore
    reactor.advance(0)
    assert reactor.run_until(lambda: bool(found), timeout=10)
    return found[0]


def test_discovery_lists_responders_with_services(reactor: FakeUDPReactor) -> None:
    node(reactor, "a", respond=True, services=[TFTP, ServiceEntry("echo", "tcp", 7)])
    node(reactor, "b", respond=True)
    node(reactor, "passive")  # respond off: never answers
    nodes = run_discover(reactor, timeout=1.0)
    assert [(n.name, n.host, n.port) for n in nodes] == [("a", "127.0.0.1", PORT),
                                                        ("b", "127.0.0.1", PORT)]
    assert nodes[0].services == (TFTP, ServiceEntry("echo", "tcp", 7))
    assert reactor.seconds() == 1.0


def test_discovery_rtt_and_early_finish(reactor: FakeUDPReactor) -> None:
    reactor.conditions = LinkConditions(delay=0.05)
    node(reactor, "a", respond=True)
    nodes = run_discover(reactor, timeout=5.0, max_nodes=1)
    assert len(nodes) == 1 and nodes[0].rtt == pytest.approx(0.1)
    assert reactor.seconds() == pytest.approx(0.1)  # did not wait for the timeout


def test_discovery_survives_a_lost_query(reactor: FakeUDPReactor) -> None:
    node(reactor, "a", respond=True)
    reactor.set_link("127.0.0.1", LOOP, LinkConditions(loss=1.0))
    found: list[list[DiscoveredNode]] = []
    discover(reactor, [LOOP], port=PORT, timeout=1.0).addCallback(found.append)
    reactor.advance(0.1)
    reactor.set_link("127.0.0.1", LOOP, None)  # the second query, 0.2 s later, gets through
    reactor.pump([0.05] * 20)
    assert [n.name for n in found[0]] == ["a"]


def test_service_filter(reactor: FakeUDPReactor) -> None:
    a = node(reactor, "a", respond=True, services=[TFTP])
    b = node(reactor, "b", respond=True)
    assert [n.name for n in run_discover(reactor, service="tftp")] == ["a"]
    assert b.node.stats.queries_filtered >= 1 and a.node.stats.replies >= 1


def query_from(raw: RecordingDatagramProtocol, node_id: bytes = b"\x09" * 8, *,
               pad_to: int | None = None) -> bytes:
    datagram = wire.encode(Query(node_id, b"\x05" * 8), pad_to=pad_to)
    raw.transport.write(datagram, (LOOP, PORT))  # type: ignore[union-attr]
    return datagram


def test_reply_is_unicast_to_the_querier_and_never_longer(reactor: FakeUDPReactor) -> None:
    a = node(reactor, "a", respond=True, services=[TFTP])
    raw = injector(reactor)
    query = query_from(raw)
    reactor.advance(0)
    [(reply, sender)] = raw.received
    assert sender == ("127.0.0.1", PORT)
    assert len(reply) <= len(query)
    assert wire.decode(reply) == Reply(a.node.node_id, b"\x05" * 8, NodeInfo("a", (TFTP,)))
    replies = [d for d in reactor.sent if d.src[1] == PORT]
    assert [d.dst for d in replies] == [("127.0.0.1", raw.transport.getHost().port)]  # type: ignore[union-attr]


def test_unpadded_query_gets_no_reply(reactor: FakeUDPReactor) -> None:
    a = node(reactor, "a", respond=True, services=[TFTP])
    raw = injector(reactor)
    query_from(raw, pad_to=0)
    reactor.advance(0)
    assert raw.received == [] and a.node.stats.replies_not_smaller == 1


def test_responder_is_no_amplifier(reactor: FakeUDPReactor) -> None:
    limits = BroadcastLimits(reply_rate=1, reply_burst=3, total_reply_rate=10,
                             total_reply_burst=10)
    a = node(reactor, "a", respond=True, limits=limits)
    raw = injector(reactor)
    for _ in range(30):
        query_from(raw)
    reactor.advance(0)
    assert len(raw.received) == 3  # per-source burst
    assert a.node.stats.replies_rate_limited == 27
    reactor.advance(1)
    query_from(raw)
    reactor.advance(0)
    assert len(raw.received) == 4  # refilled at the per-source rate
    sent_bytes = sum(len(d.data) for d in reactor.sent if d.src[1] == PORT)
    received_bytes = 31 * wire.QUERY_SIZE
    assert sent_bytes < received_bytes / 7


def test_total_reply_budget_across_sources(reactor: FakeUDPReactor) -> None:
    limits = BroadcastLimits(reply_rate=100, reply_burst=100, total_reply_rate=1,
                             total_reply_burst=5)
    a = node(reactor, "a", respond=True, limits=limits)
    sockets = [injector(reactor) for _ in range(10)]
    for raw in sockets:
        query_from(raw)
        query_from(raw)
    reactor.advance(0)
    assert sum(len(raw.received) for raw in sockets) == 5
    assert a.node.stats.replies_rate_limited == 15


def test_never_answers_own_queries_or_non_queries(reactor: FakeUDPReactor) -> None:
    a = node(reactor, "a", respond=True)
    raw = injector(reactor)
    query_from(raw, node_id=a.node.node_id)  # its own node id: ignored outright
    for message in (Reply(b"\x09" * 8, b"\x05" * 8, NodeInfo("x")),
                    Announcement(b"\x09" * 8, 1, NodeInfo("x"), 30)):
        raw.transport.write(wire.encode(message, pad_to=512), (LOOP, PORT))  # type: ignore
    reactor.advance(0)
    assert raw.received == []
    assert a.node.stats.own == 1 and a.node.stats.replies == 0


def test_no_reply_to_reflector_ports(reactor: FakeUDPReactor) -> None:
    a = node(reactor, "a", respond=True)
    for port in (53, 123, 19):
        query_from(injector(reactor, port))
    reactor.advance(0)
    assert a.node.stats.replies == 0 and a.node.stats.replies_refused == 3


def test_summary_log_once_a_minute(reactor: FakeUDPReactor) -> None:
    from twisted.logger import globalLogPublisher

    seen: list[dict[str, object]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        node(reactor, "b")
        raw = injector(reactor)
        for _ in range(1000):
            raw.transport.write(b"junk", (LOOP, PORT))  # type: ignore[union-attr]
        reactor.advance(0)
        reactor.advance(59)
        assert not [e for e in seen if "foreign" in str(e.get("log_format"))]
        reactor.advance(1)
        [event] = [e for e in seen if "foreign" in str(e.get("log_format"))]
        assert event["junk"] == 1000
    finally:
        globalLogPublisher.removeObserver(seen.append)


# ------------------------------------------------------------------------------ suite, tap


def test_advertises_the_ports_of_sibling_services(reactor: FakeUDPReactor) -> None:
    root = MultiService()
    echo = echo_service(reactor, port=7007, tcp=False)
    echo.setName("echo")
    echo.setServiceParent(root)
    broadcast = broadcast_service(reactor, name="a", port=PORT, respond=True,
                                  services=[TFTP], targets=loopback)
    broadcast.setServiceParent(root)
    root.startService()
    assert broadcast.node.info() == NodeInfo("a", (TFTP, ServiceEntry("echo", "udp", 7007)))


def test_standalone_options_and_build(reactor: FakeUDPReactor) -> None:
    options = Options()
    options.parseOptions([
        "--port", str(PORT), "--announce", "--discovery", "--name", "n1",
        "--addresses", LOOP, "--advertise", "tftp/udp/69,echo/tcp/7", "--interval", "2",
    ])
    service = build_broadcast(options, reactor)
    assert isinstance(service, BroadcastService) and service.announcer is not None
    assert service.announcer.interval == 2 and service.node.ttl == 6
    assert service.node.respond
    service.startService()
    reactor.advance(0)
    assert service.node.stats.announced == 1
    for bad in (["--advertise", "tftp/udp"], ["--name", "a\x07"], ["--interval", "0"],
                ["--addresses", "eth0"], ["--interval", "10", "--ttl", "5"]):
        with pytest.raises(usage.UsageError):
            Options().parseOptions(bad)


def test_defaults_are_passive() -> None:
    options = Options()
    options.parseOptions([])
    assert not options["announce"] and not options["discovery"] and not options["limited"]
    service = build_broadcast(options, FakeUDPReactor())
    assert isinstance(service, BroadcastService) and service.announcer is None


def test_suite_switch(reactor: FakeUDPReactor) -> None:
    suite = suite_options([BROADCAST_SPEC])()
    suite.parseOptions(["--discovery", "--broadcast-port", str(PORT)])
    root = make_suite_service([BROADCAST_SPEC], suite, reactor)
    root.startService()
    [child] = list(root)  # type: ignore[call-overload]
    assert isinstance(child, BroadcastService) and child.node.respond
    off = suite_options([BROADCAST_SPEC])()
    with pytest.raises(usage.UsageError, match="nothing to run"):
        off.parseOptions([])


def test_service_list_parser() -> None:
    assert service_list("tftp/udp/69, echo/TCP/7") == (TFTP, ServiceEntry("echo", "tcp", 7))
    assert service_list("") == ()
    with pytest.raises(ValueError):
        service_list("tftp/udp/0")


def test_target_spec_default_excludes_limited_broadcast() -> None:
    assert "255.255.255.255" not in [t.address for t in TargetSpec().resolve(lambda: [])]


@pytest.mark.parametrize("interval", [0.0, 0.01, -1.0, float("inf"), float("nan")])
def test_the_library_refuses_an_announcement_flood(interval: float) -> None:
    # The plugin's option refuses these too (tests/test_tap_option_errors.py); an
    # embedding program gets the same floor.
    with pytest.raises(ValueError, match=r"interval must be a finite number of seconds from 0\.1"):
        node(FakeUDPReactor(), "a", announce=True, interval=interval, start=False)
    node(FakeUDPReactor(), "a", announce=True, interval=0.1, start=False)

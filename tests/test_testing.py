"""Tests for netsvc.testing, the in-memory UDP reactor."""

from __future__ import annotations

import errno
import socket
import textwrap
import warnings
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError, InvalidAddressError, MessageLengthError
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorTCP,
    IReactorTime,
    IReactorUDP,
    IUDPTransport,
)
from twisted.internet.protocol import DatagramProtocol, Factory
from zope.interface.verify import verifyObject

from netsvc.testing import (
    EPHEMERAL_PORT_RANGE,
    MAX_UDP_PAYLOAD_IPV4,
    MAX_UDP_PAYLOAD_IPV6,
    FakeUDPPort,
    FakeUDPReactor,
    LinkConditions,
    PumpLimitError,
    RecordingDatagramProtocol,
    SentDatagram,
)

Address = tuple[str, int]


def listen(
    reactor: FakeUDPReactor, interface: str = "127.0.0.1", port: int = 0, size: int = 8192
) -> tuple[RecordingDatagramProtocol, FakeUDPPort]:
    protocol = RecordingDatagramProtocol()
    return protocol, reactor.listenUDP(port, protocol, interface, size)


def address(port: FakeUDPPort) -> Address:
    host = port.getHost()
    return (host.host, host.port)


class Echo(DatagramProtocol):
    noisy = False

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        assert self.transport is not None
        self.transport.write(datagram, addr)


# --------------------------------------------------------------------------- basics


def test_reactor_provides_interfaces_and_still_records_tcp() -> None:
    reactor = FakeUDPReactor()
    assert verifyObject(IReactorUDP, reactor)
    assert verifyObject(IReactorTime, reactor)
    assert IReactorTCP.providedBy(reactor)
    factory = Factory()
    reactor.listenTCP(8080, factory)  # type: ignore[no-untyped-call]
    assert reactor.tcpServers[0][:2] == (8080, factory)
    _, port = listen(reactor)
    assert verifyObject(IListeningPort, port)
    assert verifyObject(IUDPTransport, port)
    with pytest.raises(NotImplementedError):
        port.getHandle()


def test_delivery_between_two_ports_is_never_synchronous() -> None:
    reactor = FakeUDPReactor()
    server, server_port = listen(reactor)
    client, client_port = listen(reactor)
    client_port.write(b"ping", address(server_port))
    assert server.received == []  # scheduled, not delivered inside write()
    reactor.pump()
    assert server.received == [(b"ping", address(client_port))]
    server_port.write(b"pong", server.received[0][1])
    reactor.advance(0)
    assert client.received == [(b"pong", address(server_port))]
    assert (reactor.stats.sent, reactor.stats.delivered, reactor.stats.dropped) == (2, 2, 0)


def test_listen_udp_starts_the_protocol_like_twisted() -> None:
    reactor = FakeUDPReactor()
    protocol, port = listen(reactor)
    assert protocol.transport is port
    assert (protocol.started, protocol.numPorts) == (1, 1)
    with pytest.raises(RuntimeError):
        port.startListening()


def test_get_host_and_source_address_of_wildcard_ports() -> None:
    reactor = FakeUDPReactor()
    server, server_port = listen(reactor, "10.1.2.3", 69)
    _v4_any, v4_port = listen(reactor, "")
    _v6_any, v6_port = listen(reactor, "::")
    assert server_port.getHost() == IPv4Address("UDP", "10.1.2.3", 69)
    assert v4_port.getHost() == IPv4Address("UDP", "0.0.0.0", v4_port.getHost().port)
    assert v6_port.getHost() == IPv6Address("UDP", "::", v6_port.getHost().port)
    v4_port.write(b"a", ("10.1.2.3", 69))
    reactor.source_address_v4 = "192.0.2.7"
    v4_port.write(b"b", ("10.1.2.3", 69))
    v6_port.write(b"c", ("::ffff:10.1.2.3", 69))
    reactor.pump()
    assert server.received == [
        (b"a", ("127.0.0.1", v4_port.getHost().port)),
        (b"b", ("192.0.2.7", v4_port.getHost().port)),
        (b"c", ("192.0.2.7", v6_port.getHost().port)),
    ]


def test_sending_to_the_unspecified_address_reaches_the_local_port() -> None:
    # Linux sends to 0.0.0.0 / :: as to the source address (loopback for a wildcard
    # sender), so the getHost() of a wildcard port is usable as a destination.
    reactor = FakeUDPReactor()
    wildcard, wildcard_port = listen(reactor, "")
    loopback, loopback_port = listen(reactor, "127.0.0.1")
    loopback6, loopback6_port = listen(reactor, "::1")
    _, client_port = listen(reactor, "")
    _, client6_port = listen(reactor, "::")
    client_port.write(b"a", address(wildcard_port))
    client_port.write(b"b", ("0.0.0.0", loopback_port.getHost().port))
    client6_port.write(b"c", ("::", loopback6_port.getHost().port))
    reactor.pump()
    assert wildcard.received == [(b"a", ("127.0.0.1", client_port.getHost().port))]
    assert loopback.received == [(b"b", ("127.0.0.1", client_port.getHost().port))]
    assert loopback6.received == [(b"c", ("::1", client6_port.getHost().port))]


# --------------------------------------------------------------------------- clock


def test_delay_and_jitter_need_the_clock_to_advance() -> None:
    reactor = FakeUDPReactor(LinkConditions(delay=0.5, jitter=0.25))
    server, server_port = listen(reactor)
    _, client_port = listen(reactor)
    client_port.write(b"late", address(server_port))
    reactor.pump()
    reactor.advance(0.25)
    assert server.received == []
    reactor.advance(0.5)  # delay + at most jitter have passed
    assert server.datagrams == [b"late"]


def test_pump_runs_everything_due_now_but_nothing_later() -> None:
    reactor = FakeUDPReactor()
    ran: list[str] = []
    reactor.callLater(0, lambda: reactor.callLater(0, ran.append, "chained"))
    reactor.callLater(1, ran.append, "later")
    reactor.pump()
    assert ran == ["chained"]
    assert reactor.seconds() == 0
    reactor.pump(timings=[0.5, 0.5])  # Clock.pump's signature still works
    assert ran == ["chained", "later"]


def test_pump_and_advance_stop_a_zero_delay_ping_pong() -> None:
    reactor = FakeUDPReactor()
    left = reactor.listenUDP(0, Echo(), "127.0.0.1")
    right = reactor.listenUDP(0, Echo(), "127.0.0.1")
    left.write(b"forever", address(right))
    with pytest.raises(PumpLimitError):
        reactor.pump(max_steps=100)
    reactor.max_calls_per_advance = 1000
    with pytest.raises(PumpLimitError):
        reactor.advance(0)
    with pytest.raises(PumpLimitError):
        reactor.run_until(lambda: False, timeout=1, max_steps=500)


def test_run_until_jumps_to_the_next_call_and_stops_at_the_deadline() -> None:
    reactor = FakeUDPReactor(LinkConditions(delay=2.0))
    server, server_port = listen(reactor)
    _, client_port = listen(reactor)
    client_port.write(b"x", address(server_port))
    assert reactor.run_until(lambda: server.received, timeout=10)
    assert reactor.seconds() == 2.0  # jumped straight to the arrival

    assert reactor.run_until(lambda: True, timeout=10)  # already true: no time passes
    assert reactor.seconds() == 2.0

    assert not reactor.run_until(lambda: False, timeout=3)
    assert reactor.seconds() == 5.0  # at the deadline, not beyond

    ticks: list[float] = []
    reactor.callLater(100, ticks.append, 1.0)
    assert not reactor.run_until(lambda: ticks, timeout=1.0, step=0.25)
    assert reactor.seconds() == 6.0 and ticks == []
    assert not reactor.run_until(lambda: ticks, timeout=0.5)  # next call is far beyond
    assert reactor.seconds() == 6.5
    assert not reactor.run_until(lambda: ticks, timeout=0.5, step=0.4)
    assert reactor.seconds() == 7.0 and ticks == []
    with pytest.raises(ValueError):
        reactor.run_until(lambda: True, timeout=-1)
    with pytest.raises(ValueError):
        reactor.run_until(lambda: True, timeout=1, step=0)


def test_scheduler_keeps_clock_semantics_for_cancel_reset_and_ties() -> None:
    reactor = FakeUDPReactor()
    ran: list[str] = []
    first = reactor.callLater(1, ran.append, "first")
    reactor.callLater(1, ran.append, "second")  # same time: FIFO
    moved_later = reactor.callLater(0.5, ran.append, "moved later")
    moved_earlier = reactor.callLater(5, ran.append, "moved earlier")
    cancelled = reactor.callLater(0.1, ran.append, "cancelled")
    assert IDelayedCall.providedBy(first)
    moved_later.reset(3)
    moved_earlier.reset(0.2)
    cancelled.cancel()
    reactor.advance(1)
    assert ran == ["moved earlier", "first", "second"]
    reactor.advance(2)
    assert ran[-1] == "moved later"
    assert reactor.getDelayedCalls() == []


# --------------------------------------------------------------------------- link conditions


def _blast(seed: int, conditions: LinkConditions, count: int) -> tuple[FakeUDPReactor, list[int]]:
    """Send ``count`` numbered datagrams 10 ms apart; the sequence numbers as received."""
    reactor = FakeUDPReactor(conditions, seed=seed, record=True)
    server, server_port = listen(reactor)
    _, client_port = listen(reactor)
    destination = address(server_port)
    for number in range(count):
        client_port.write(number.to_bytes(4, "big"), destination)
        reactor.advance(0.01)
    reactor.advance(10)
    return reactor, [int.from_bytes(data, "big") for data in server.datagrams]


def test_loss_duplication_reordering_rates_over_10000_datagrams() -> None:
    conditions = LinkConditions(loss=0.1, duplicate=0.05, reorder=0.1, reorder_delay=0.05)
    reactor, received = _blast(7, conditions, 10_000)
    stats = reactor.stats
    assert stats.sent == 10_000 and len(reactor.sent) == 10_000
    assert 0.085 < stats.lost / stats.sent < 0.115
    assert 0.04 < stats.duplicated / (stats.sent - stats.lost) < 0.06
    assert stats.delivered == len(received) == stats.sent - stats.lost + stats.duplicated
    assert stats.undeliverable == 0
    late = 0
    highest = -1
    for number in received:
        if number < highest:
            late += 1
        highest = max(highest, number)
    assert 0.08 < late / len(received) < 0.12


def test_same_seed_same_trace_other_seed_other_trace() -> None:
    conditions = LinkConditions(loss=0.2, duplicate=0.1, reorder=0.2, jitter=0.03)
    reactor_a, received_a = _blast(42, conditions, 500)
    reactor_b, received_b = _blast(42, conditions, 500)
    _, received_c = _blast(43, conditions, 500)
    assert received_a == received_b
    assert reactor_a.stats == reactor_b.stats
    assert reactor_a.sent == reactor_b.sent
    assert received_a != received_c


def test_perfect_link_keeps_order() -> None:
    _, received = _blast(0, LinkConditions(), 200)
    assert received == list(range(200))


def test_link_conditions_are_validated() -> None:
    with pytest.raises(ValueError):
        LinkConditions(loss=1.5)
    with pytest.raises(ValueError):
        LinkConditions(duplicate=-0.1)
    with pytest.raises(ValueError):
        LinkConditions(delay=-1)
    with pytest.raises(ValueError):
        LinkConditions(jitter=float("inf"))
    with pytest.raises(TypeError):
        LinkConditions(reorder="0.5")  # type: ignore[arg-type]
    assert LinkConditions(loss=1).loss == 1


def test_per_direction_link_overrides() -> None:
    reactor = FakeUDPReactor()
    server, server_port = listen(reactor, "10.0.0.1", 1000)
    client, client_port = listen(reactor, "10.0.0.2", 2000)
    reactor.set_link("10.0.0.2", "10.0.0.1", LinkConditions(loss=1.0))
    assert reactor.conditions_for("10.0.0.2", "::ffff:10.0.0.1").loss == 1.0
    assert reactor.conditions_for("10.0.0.1", "10.0.0.2") == reactor.conditions
    client_port.write(b"lost", ("10.0.0.1", 1000))
    server_port.write(b"arrives", ("10.0.0.2", 2000))
    reactor.pump()
    assert (server.received, client.datagrams) == ([], [b"arrives"])
    reactor.set_link("10.0.0.2", "10.0.0.1", None)
    reactor.conditions = LinkConditions(delay=1.0)
    client_port.write(b"slow", ("10.0.0.1", 1000))
    reactor.pump()
    assert server.received == []
    reactor.advance(1.0)
    assert server.datagrams == [b"slow"]


# --------------------------------------------------------------------------- sizes


def test_datagrams_longer_than_max_packet_size_are_truncated() -> None:
    reactor = FakeUDPReactor()
    small, small_port = listen(reactor, size=100)
    default, default_port = listen(reactor)  # Twisted's default maxPacketSize, 8192
    big, big_port = listen(reactor, size=65536)
    _, sender = listen(reactor)
    payload = bytes(range(256)) * 40  # 10240 bytes
    for port in (small_port, default_port, big_port):
        sender.write(payload, address(port))
    reactor.pump()
    assert small.datagrams == [payload[:100]]
    assert default.datagrams == [payload[:8192]]
    assert big.datagrams == [payload]
    assert reactor.stats.truncated == 2


def test_oversized_writes_raise_message_length_error() -> None:
    reactor = FakeUDPReactor()
    receiver4, port4 = listen(reactor, size=70000)
    receiver6, port6 = listen(reactor, "::1", size=70000)
    _, sender4 = listen(reactor)
    _, sender6 = listen(reactor, "::1")
    sender4.write(b"x" * MAX_UDP_PAYLOAD_IPV4, address(port4))
    sender6.write(b"x" * MAX_UDP_PAYLOAD_IPV6, address(port6))
    with pytest.raises(MessageLengthError):
        sender4.write(b"x" * (MAX_UDP_PAYLOAD_IPV4 + 1), address(port4))
    with pytest.raises(MessageLengthError):
        sender6.write(b"x" * (MAX_UDP_PAYLOAD_IPV6 + 1), address(port6))
    reactor.pump()
    assert [len(d) for d in receiver4.datagrams] == [65507]
    assert [len(d) for d in receiver6.datagrams] == [65527]
    assert reactor.stats.sent == 2


# --------------------------------------------------------------------------- writes


def test_write_validates_like_twisted() -> None:
    reactor = FakeUDPReactor()
    receiver, receiver_port = listen(reactor)
    _, port = listen(reactor)
    _, port6 = listen(reactor, "::1")
    with pytest.raises(TypeError):
        port.write("text", address(receiver_port))  # type: ignore[arg-type]
    with pytest.raises(InvalidAddressError):
        port.write(b"x", ("localhost", 53))
    with pytest.raises(InvalidAddressError):
        port.write(b"x", ("::1", 53))
    with pytest.raises(InvalidAddressError):
        port6.write(b"x", ("127.0.0.1", 53))
    with pytest.raises(InvalidAddressError):
        port6.write(b"x", ("<broadcast>", 53))
    with pytest.raises(AssertionError):
        port.write(b"x")
    with pytest.raises(OverflowError):
        port.write(b"x", ("127.0.0.1", 65536))
    with pytest.raises(OSError) as raised:
        port.write(b"x", ("127.0.0.1", 0))
    assert raised.value.errno == errno.EINVAL
    port.write(bytearray(b"ok"), address(receiver_port))  # type: ignore[arg-type]
    port.writeSequence([b"o", b"k"], address(receiver_port))
    reactor.pump()
    assert receiver.datagrams == [b"ok", b"ok"]
    assert reactor.stats.sent == 2


def test_nobody_listening_is_a_silent_drop_for_unconnected_ports() -> None:
    reactor = FakeUDPReactor()
    client, port = listen(reactor)
    port.write(b"x", ("127.0.0.1", 9))
    reactor.pump()
    assert client.refused == 0
    assert reactor.stats.undeliverable == reactor.stats.dropped == 1


def test_connected_port_filters_sources_and_gets_connection_refused() -> None:
    reactor = FakeUDPReactor()
    server, server_port = listen(reactor)
    client, client_port = listen(reactor)
    stranger, stranger_port = listen(reactor)
    client_port.connect(*address(server_port))
    client_port.write(b"hello")
    client_port.write(b"again", address(server_port))
    with pytest.raises(AssertionError):
        client_port.write(b"elsewhere", address(stranger_port))
    with pytest.raises(RuntimeError):
        client_port.connect(*address(stranger_port))
    reactor.pump()
    assert server.datagrams == [b"hello", b"again"]

    stranger_port.write(b"spoof", address(client_port))
    server_port.write(b"reply", address(client_port))
    reactor.pump()
    assert client.received == [(b"reply", address(server_port))]
    assert reactor.stats.undeliverable == 1

    server_port.stopListening()
    client_port.write(b"anyone?")
    assert client.refused == 0  # the ICMP error comes back asynchronously
    reactor.pump()
    assert client.refused == 1
    assert stranger.refused == 0


def test_connect_validates_like_twisted() -> None:
    reactor = FakeUDPReactor()
    _, port = listen(reactor)
    _, port6 = listen(reactor, "::")
    with pytest.raises(InvalidAddressError):
        port.connect("localhost", 53)
    with pytest.raises(socket.gaierror):
        port.connect("::1", 53)
    with pytest.raises(socket.gaierror):
        port6.connect("127.0.0.1", 53)
    with pytest.raises(PermissionError):
        port.connect("127.255.255.255", 53)
    port6.connect("::ffff:127.0.0.1", 53)


# --------------------------------------------------------------------------- binding


def test_dual_stack_port_sees_ipv4_peers_as_mapped_addresses() -> None:
    reactor = FakeUDPReactor()
    server = reactor.listenUDP(5353, Echo(), "::")
    v4, v4_port = listen(reactor, "127.0.0.1")
    v6, v6_port = listen(reactor, "::1")
    recorder = RecordingDatagramProtocol()
    reactor.listenUDP(5354, recorder, "::")
    v4_port.write(b"four", ("127.0.0.1", 5354))
    v6_port.write(b"six", ("::1", 5354))
    v4_port.write(b"echo4", ("127.0.0.1", 5353))
    v6_port.write(b"echo6", ("::1", 5353))
    reactor.pump()
    assert recorder.received == [
        (b"four", ("::ffff:127.0.0.1", v4_port.getHost().port)),
        (b"six", ("::1", v6_port.getHost().port)),
    ]
    # The echo answered the mapped address, which reaches the IPv4 port as IPv4.
    assert v4.received == [(b"echo4", ("127.0.0.1", 5353))]
    assert v6.received == [(b"echo6", ("::1", 5353))]
    assert server.getHost() == IPv6Address("UDP", "::", 5353)


def test_connected_dual_stack_port_accepts_its_mapped_peer() -> None:
    reactor = FakeUDPReactor()
    client, client_port = listen(reactor, "::")
    _, server_port = listen(reactor, "127.0.0.1", 69)
    client_port.connect("::ffff:127.0.0.1", 69)
    server_port.write(b"hi", ("127.0.0.1", client_port.getHost().port))
    reactor.pump()
    assert client.received == [(b"hi", ("::ffff:127.0.0.1", 69))]


def test_ephemeral_ports_and_bind_conflicts() -> None:
    reactor = FakeUDPReactor()
    low = EPHEMERAL_PORT_RANGE[0]
    listen(reactor, "127.0.0.1", low + 1)
    first = listen(reactor)[1].getHost().port
    second = listen(reactor, "::1")[1].getHost().port
    assert (first, second) == (low, low + 2)  # skips the port taken explicitly

    listen(reactor, "127.0.0.1", 7000)
    listen(reactor, "127.0.0.2", 7000)  # other address: fine
    listen(reactor, "::1", 7000)  # other family: fine
    for interface in ("127.0.0.1", "", "0.0.0.0", "::"):
        with pytest.raises(CannotListenError) as raised:
            listen(reactor, interface, 7000)
        assert raised.value.port == 7000
    listen(reactor, "", 7001)
    for interface in ("10.9.8.7", "127.255.255.255", "::"):
        with pytest.raises(CannotListenError):
            listen(reactor, interface, 7001)
    listen(reactor, "::1", 7001)

    with pytest.raises(InvalidAddressError):
        listen(reactor, "localhost")
    with pytest.raises(OverflowError):
        listen(reactor, "127.0.0.1", 70000)


def test_stop_listening() -> None:
    reactor = FakeUDPReactor(LinkConditions(delay=1.0))
    server, server_port = listen(reactor, "127.0.0.1", 4000)
    _, client_port = listen(reactor)
    client_port.write(b"in flight", ("127.0.0.1", 4000))
    stopped = server_port.stopListening()
    fired: list[object] = []
    stopped.addCallback(fired.append)
    assert fired == [None]
    assert (server.stopped, server.transport, server_port.listening) == (1, None, False)
    assert server_port not in reactor.udp_ports
    reactor.advance(1.0)
    assert server.received == []
    assert reactor.stats.undeliverable == 1
    with pytest.raises(RuntimeError):
        server_port.write(b"x", ("127.0.0.1", 1))
    server_port.stopListening()  # twice is harmless
    assert server.stopped == 1

    replacement, _ = listen(reactor, "127.0.0.1", 4000)  # the port number is free again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client_port.loseConnection()
    assert caught[0].category is DeprecationWarning
    assert not client_port.listening
    assert replacement.started == 1


# --------------------------------------------------------------------------- broadcast


def test_broadcast_needs_permission() -> None:
    reactor = FakeUDPReactor()
    listener, _ = listen(reactor, "", 9999)
    _, sender = listen(reactor)
    assert not sender.getBroadcastAllowed()
    with pytest.raises(PermissionError) as raised:
        sender.write(b"hello all", ("127.255.255.255", 9999))
    assert raised.value.errno == errno.EACCES
    with pytest.raises(PermissionError):
        sender.write(b"hello all", ("<broadcast>", 9999))
    sender.setBroadcastAllowed(True)
    assert sender.getBroadcastAllowed()
    sender.write(b"hello all", ("127.255.255.255", 9999))
    reactor.pump()
    assert listener.received == [(b"hello all", address(sender))]


def test_broadcast_fans_out_to_wildcard_and_broadcast_bound_ports_only() -> None:
    reactor = FakeUDPReactor(reuse_address=True)  # several listeners on one port number
    reactor.add_broadcast_address("10.0.0.255")
    assert reactor.broadcast_addresses == {"127.255.255.255", "10.0.0.255"}
    on_unicast, _ = listen(reactor, "127.0.0.1", 5000)
    any_v4, _ = listen(reactor, "", 5000)
    dual, _ = listen(reactor, "::", 5000)
    on_broadcast, _ = listen(reactor, "127.255.255.255", 5000)
    other_number, _ = listen(reactor, "", 5001)
    _, sender = listen(reactor)
    sender.setBroadcastAllowed(True)
    sender.write(b"1", ("127.255.255.255", 5000))
    sender.write(b"2", ("10.0.0.255", 5000))
    sender.write(b"3", ("<broadcast>", 5000))
    reactor.pump()
    assert any_v4.datagrams == [b"1", b"2", b"3"]
    assert dual.received[0] == (b"1", ("::ffff:127.0.0.1", sender.getHost().port))
    assert len(dual.received) == 3
    assert on_broadcast.datagrams == [b"1"]
    assert on_unicast.datagrams == other_number.datagrams == []
    # Unicast still goes to one port: the most specific one, else the same family.
    sender.write(b"unicast", ("127.0.0.1", 5000))
    sender.write(b"to any", ("127.0.0.2", 5000))
    reactor.pump()
    assert on_unicast.datagrams == [b"unicast"]
    assert any_v4.datagrams == [b"1", b"2", b"3", b"to any"]
    assert len(dual.received) == 3


def test_broadcast_losses_are_independent_per_receiver() -> None:
    reactor = FakeUDPReactor(LinkConditions(loss=0.5), seed=3, reuse_address=True)
    first, _ = listen(reactor, "", 6000)
    second, _ = listen(reactor, "", 6000)
    _, sender = listen(reactor)
    sender.setBroadcastAllowed(True)
    for number in range(400):
        sender.write(number.to_bytes(2, "big"), ("127.255.255.255", 6000))
    reactor.pump()
    got_first, got_second = set(first.datagrams), set(second.datagrams)
    assert 150 < len(got_first) < 250 and 150 < len(got_second) < 250
    both = len(got_first & got_second)
    assert 60 < both < 140  # about a quarter: independent decisions
    assert reactor.stats.lost == 800 - len(got_first) - len(got_second)


# --------------------------------------------------------------------------- faults


def test_write_failure_injection() -> None:
    reactor = FakeUDPReactor()
    server, server_port = listen(reactor)
    _, client_port = listen(reactor)
    _, other_port = listen(reactor)
    destination = address(server_port)

    reactor.fail_writes(errno.EAGAIN, count=2)
    for _ in range(2):
        with pytest.raises(BlockingIOError) as raised:
            client_port.write(b"x", destination)
        assert raised.value.errno == errno.EAGAIN
    client_port.write(b"third", destination)
    assert reactor.stats.sent == 1

    reactor.fail_writes(errno.ENOBUFS, port=client_port)
    for _ in range(3):
        with pytest.raises(OSError):
            client_port.write(b"x", destination)
    other_port.write(b"other port unaffected", destination)
    reactor.clear_write_failures(client_port)
    client_port.write(b"cleared", destination)

    reactor.fail_writes(errno.EPERM)
    with pytest.raises(PermissionError):
        other_port.write(b"x", destination)
    reactor.clear_write_failures()
    other_port.write(b"all cleared", destination)
    reactor.pump()
    assert server.datagrams == [b"third", b"other port unaffected", b"cleared", b"all cleared"]


def test_injected_errnos_get_twisted_translation() -> None:
    reactor = FakeUDPReactor()
    server, server_port = listen(reactor)
    client, client_port = listen(reactor)
    reactor.fail_writes(errno.EMSGSIZE, count=1)
    with pytest.raises(MessageLengthError):
        client_port.write(b"x", address(server_port))
    reactor.fail_writes(errno.EINTR, count=1)
    client_port.write(b"retried", address(server_port))  # Twisted retries EINTR
    reactor.fail_writes(errno.ECONNREFUSED, count=1)
    client_port.write(b"swallowed", address(server_port))  # ignored when unconnected
    client_port.connect(*address(server_port))
    reactor.fail_writes(errno.ECONNREFUSED, count=1)
    client_port.write(b"refused")
    assert client.refused == 1
    reactor.pump()
    assert server.datagrams == [b"retried"]
    with pytest.raises(ValueError):
        reactor.fail_writes(errno.EINTR)
    with pytest.raises(ValueError):
        reactor.fail_writes(errno.EAGAIN, count=0)


def test_protocol_errors_propagate_unless_told_to_log() -> None:
    class Broken(DatagramProtocol):
        noisy = False

        def datagramReceived(self, datagram: bytes, addr: Address) -> None:
            raise ZeroDivisionError(datagram)

    for strict in (True, False):
        reactor = FakeUDPReactor(raise_protocol_errors=strict)
        broken = reactor.listenUDP(0, Broken(), "127.0.0.1")
        _, port = listen(reactor)
        port.write(b"boom", address(broken))
        if strict:
            with pytest.raises(ZeroDivisionError):
                reactor.pump()
        else:
            reactor.pump()
        assert len(reactor.protocol_errors) == 1
        assert isinstance(reactor.protocol_errors[0].value, ZeroDivisionError)


def test_trace_records_what_was_sent() -> None:
    reactor = FakeUDPReactor(LinkConditions(loss=1.0), record=True)
    _, server_port = listen(reactor, "::")
    _, client_port = listen(reactor)
    reactor.advance(3)
    client_port.write(b"junk", ("127.0.0.1", server_port.getHost().port))
    assert reactor.sent == [
        SentDatagram(
            src=("127.0.0.1", client_port.getHost().port),
            dst=("127.0.0.1", server_port.getHost().port),
            data=b"junk",
            time=3.0,
        )
    ]
    assert FakeUDPReactor().sent == []  # off by default


# --------------------------------------------------------------------------- as a user would


class RetryingClient(DatagramProtocol):
    """Sends numbered requests one at a time, retrying on a timeout until answered."""

    noisy = False

    def __init__(
        self, clock: IReactorTime, server: Address, count: int, timeout: float = 1.0
    ) -> None:
        self.clock = clock
        self.server = server
        self.requests = [b"request %d" % number for number in range(count)]
        self.timeout = timeout
        self.answers: list[bytes] = []
        self.attempts = 0
        self.timer: IDelayedCall | None = None

    @property
    def done(self) -> bool:
        return len(self.answers) == len(self.requests)

    def startProtocol(self) -> None:
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.attempts += 1
        self.transport.write(self.requests[len(self.answers)], self.server)
        self.timer = self.clock.callLater(self.timeout, self._send)

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        if self.done or addr != self.server or datagram != self.requests[len(self.answers)]:
            return  # late duplicate of an earlier answer
        assert self.timer is not None
        self.timer.cancel()
        self.answers.append(datagram)
        if not self.done:
            self._send()


def _echo_session(seed: int) -> tuple[RetryingClient, FakeUDPReactor]:
    reactor = FakeUDPReactor(LinkConditions(loss=0.2, delay=0.01), seed=seed)
    server_port = reactor.listenUDP(0, Echo(), "127.0.0.1")
    client = RetryingClient(reactor, address(server_port), count=50)
    reactor.listenUDP(0, client, "127.0.0.1")
    assert reactor.run_until(lambda: client.done, timeout=3600)
    return client, reactor


def test_retrying_echo_client_over_a_lossy_link_finishes_deterministically() -> None:
    client, reactor = _echo_session(seed=2024)
    assert client.answers == client.requests
    # 20% loss each way: about 1 / 0.8**2 = 1.56 attempts per request.
    assert 50 < client.attempts < 120
    assert reactor.stats.lost > 0
    finished_at = reactor.seconds()
    again, reactor_again = _echo_session(seed=2024)
    assert (again.attempts, reactor_again.seconds()) == (client.attempts, finished_at)
    assert reactor_again.stats == reactor.stats


# --------------------------------------------------------------------------- the docs


def _python_blocks(path: Path) -> list[str]:
    """The ``.. code-block:: python`` bodies of a reST file."""
    blocks: list[str] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if line.strip() != ".. code-block:: python":
            continue
        body: list[str] = []
        for following in lines[index + 1 :]:
            if following.strip() and not following.startswith(" "):
                break
            body.append(following)
        blocks.append(textwrap.dedent("\n".join(body)))
    return blocks


def test_examples_in_the_docs_run() -> None:
    blocks = _python_blocks(Path(__file__).resolve().parent.parent / "docs" / "testing.rst")
    assert len(blocks) == 2
    ran = 0
    for block in blocks:
        namespace: dict[str, object] = {"__name__": "docs_example"}
        exec(compile(block, "docs/testing.rst", "exec"), namespace)
        for name, value in namespace.items():
            if name.startswith("test_") and callable(value):
                value()
                ran += 1
    assert ran == 2

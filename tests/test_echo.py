"""Echo protocols in memory: StringTransport, task.Clock and a recording UDP transport."""

from __future__ import annotations

import errno
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from netsvc.echo import (
    ECHO_PAUSE_AFTER,
    REFLECTOR_PORTS,
    EchoLimits,
    TCPEchoFactory,
    TCPEchoProtocol,
    UDPEchoProtocol,
    _PatientPause,
    is_unanswerable_source,
)


def connect(factory: TCPEchoFactory, host: str = "192.0.2.1") -> tuple[Any, StringTransport]:
    protocol = factory.buildProtocol(IPv4Address("TCP", host, 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
    if protocol is not None:
        protocol.makeConnection(transport)
    return protocol, transport


def test_tcp_echoes_bytes_and_registers_a_streaming_producer() -> None:
    protocol, transport = connect(TCPEchoFactory(Clock()))
    assert transport.producer.transport is transport and transport.streaming
    protocol.dataReceived(b"hello\r\n")
    protocol.dataReceived(b"\x00\xff")
    assert transport.value() == b"hello\r\n\x00\xff"


class PausableTransport:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")


def test_tcp_reading_pauses_only_after_the_buffer_stayed_full_for_several_writes() -> None:
    transport = PausableTransport()
    producer = _PatientPause(transport)
    for _ in range(ECHO_PAUSE_AFTER):
        producer.pauseProducing()  # the transport's buffer is over bufferSize again
    assert transport.calls == []  # still reading: the peer may just be a little behind
    producer.pauseProducing()
    producer.pauseProducing()
    assert transport.calls == ["pause"]  # once, however often it is asked
    producer.resumeProducing()  # the buffer drained
    assert transport.calls == ["pause", "resume"]
    for _ in range(ECHO_PAUSE_AFTER):
        producer.pauseProducing()
    producer.resumeProducing()  # drained before the limit: nothing to resume
    assert transport.calls == ["pause", "resume"]


def test_tcp_half_close_unregisters_producer_then_closes() -> None:
    protocol, transport = connect(TCPEchoFactory(Clock()))
    protocol.dataReceived(b"last bytes")
    protocol.readConnectionLost()
    assert transport.producer is None
    assert transport.disconnecting
    assert transport.value() == b"last bytes"


def test_tcp_connection_cap_refuses_at_accept_and_frees_on_close() -> None:
    factory = TCPEchoFactory(Clock(), EchoLimits(max_connections=2))
    first, _ = connect(factory)
    connect(factory)
    refused, _ = connect(factory)
    assert refused is None and factory.refused == 1
    first.connectionLost(None)
    again, _ = connect(factory)
    assert again is not None


def test_tcp_per_peer_cap_counts_each_address() -> None:
    factory = TCPEchoFactory(Clock(), EchoLimits(max_connections_per_peer=1))
    a, _ = connect(factory, "192.0.2.1")
    assert connect(factory, "192.0.2.1")[0] is None
    assert connect(factory, "192.0.2.2")[0] is not None
    a.connectionLost(None)
    assert connect(factory, "192.0.2.1")[0] is not None
    assert factory.per_peer == {"192.0.2.1": 1, "192.0.2.2": 1}


@pytest.mark.parametrize("phase", [0.01, 1.0, 2.5, 4.99])
def test_tcp_idle_timeout_closes_after_one_to_one_and_a_half_timeouts(phase: float) -> None:
    clock = Clock()
    factory = TCPEchoFactory(clock, EchoLimits(idle_timeout=10))
    factory.startFactory()
    try:
        clock.advance(20 + phase)  # the last data arrives ``phase`` after a sweep
        protocol, transport = connect(factory)
        protocol.dataReceived(b"x")
        silent = 0.0
        while not transport.disconnecting and silent < 30:
            clock.advance(0.01)
            silent += 0.01
        assert 10 - 1e-6 <= silent <= 15 + 0.02
    finally:
        factory.stopFactory()


def test_tcp_idle_timeout_closes_only_silent_connections() -> None:
    clock = Clock()
    factory = TCPEchoFactory(clock, EchoLimits(idle_timeout=10))
    factory.startFactory()
    try:
        chatty, chatty_transport = connect(factory)
        _, silent_transport = connect(factory)
        for _ in range(4):
            clock.advance(5)
            chatty.dataReceived(b"x")
        assert silent_transport.disconnecting and not chatty_transport.disconnecting
    finally:
        factory.stopFactory()
    assert not clock.getDelayedCalls()


def test_tcp_no_idle_timer_by_default() -> None:
    clock = Clock()
    factory = TCPEchoFactory(clock)
    factory.startFactory()
    assert not clock.getDelayedCalls()


class RecordingUDPTransport:
    def __init__(self, error: int | None = None) -> None:
        self.written: list[tuple[bytes, Any]] = []
        self.error = error

    def write(self, data: bytes, addr: Any = None) -> None:
        if self.error is not None:
            raise OSError(self.error, "injected")
        self.written.append((data, addr))


def udp_echo(limits: EchoLimits = EchoLimits(), error: int | None = None) -> tuple[
    UDPEchoProtocol, RecordingUDPTransport, Clock
]:
    clock = Clock()
    protocol = UDPEchoProtocol(clock, limits)
    transport = RecordingUDPTransport(error)
    protocol.transport = transport  # type: ignore[assignment]
    return protocol, transport, clock


@pytest.mark.parametrize("size", [0, 1, 512, 8192, 65507])
def test_udp_echoes_any_size(size: int) -> None:
    protocol, transport, _ = udp_echo()
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    protocol.datagramReceived(data, ("192.0.2.7", 40000))
    assert transport.written == [(data, ("192.0.2.7", 40000))]


@pytest.mark.parametrize("port", sorted(REFLECTOR_PORTS))
def test_udp_never_answers_reflector_ports(port: int) -> None:
    protocol, transport, _ = udp_echo()
    protocol.datagramReceived(b"ping", ("192.0.2.7", port))
    assert transport.written == [] and protocol.dropped == 1


@pytest.mark.parametrize(
    "host",
    [
        "255.255.255.255",
        "127.255.255.255",
        "224.0.0.1",
        "239.255.255.250",
        "0.0.0.0",
        "240.0.0.1",
        "ff02::1",
        "::",
        "::ffff:224.0.0.251",
        "::ffff:255.255.255.255",
        "not-an-address",
    ],
)
def test_udp_never_answers_group_or_unspecified_sources(host: str) -> None:
    assert is_unanswerable_source(host)
    protocol, transport, _ = udp_echo()
    protocol.datagramReceived(b"ping", (host, 40000))
    assert transport.written == []


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "192.0.2.255", "::1", "::ffff:10.1.2.3", "fe80::1%lo"]
)
def test_ordinary_sources_are_answerable(host: str) -> None:
    assert not is_unanswerable_source(host)


def test_udp_rate_limit_per_source_and_refill() -> None:
    protocol, transport, clock = udp_echo(EchoLimits(udp_rate=10, udp_burst=5))
    for _ in range(20):
        protocol.datagramReceived(b"x", ("192.0.2.1", 40000))
    protocol.datagramReceived(b"y", ("192.0.2.2", 40000))
    assert len(transport.written) == 6  # five from the burst of .1, one from .2
    clock.advance(0.5)  # five tokens back for .1
    for _ in range(20):
        protocol.datagramReceived(b"x", ("192.0.2.1", 40000))
    assert len(transport.written) == 11


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "::1", "::ffff:127.0.0.1"])
def test_loopback_sources_are_exempt_from_the_rate_limit_by_default(host: str) -> None:
    protocol, transport, _ = udp_echo(EchoLimits(udp_rate=10, udp_burst=5))
    for _ in range(50):
        protocol.datagramReceived(b"x", (host, 40000))
    assert len(transport.written) == 50 and protocol.dropped == 0


def test_loopback_sources_can_be_rate_limited_too() -> None:
    limits = EchoLimits(udp_rate=10, udp_burst=5, udp_limit_loopback=True)
    protocol, transport, _ = udp_echo(limits)
    for _ in range(50):
        protocol.datagramReceived(b"x", ("127.0.0.1", 40000))
    assert len(transport.written) == 5 and protocol.dropped == 45


def test_loopback_exemption_keeps_the_other_guards() -> None:
    protocol, transport, _ = udp_echo(EchoLimits(udp_rate=10, udp_burst=5))
    protocol.datagramReceived(b"x", ("127.0.0.1", 19))  # chargen: never answered
    protocol.datagramReceived(b"x", ("127.255.255.255", 40000))  # loopback broadcast
    assert transport.written == []


def test_udp_rate_limit_off() -> None:
    protocol, transport, _ = udp_echo(EchoLimits(udp_rate=None))
    for _ in range(1000):
        protocol.datagramReceived(b"x", ("192.0.2.1", 40000))
    assert len(transport.written) == 1000


@pytest.mark.parametrize("code", [errno.EAGAIN, errno.ENOBUFS, errno.EPERM, errno.ECONNREFUSED])
def test_udp_write_errors_are_counted_not_raised(code: int) -> None:
    protocol, transport, _ = udp_echo(error=code)
    protocol.datagramReceived(b"x", ("192.0.2.1", 40000))
    assert protocol.write_errors == 1
    transport.error = None
    protocol.datagramReceived(b"y", ("192.0.2.1", 40000))
    assert transport.written == [(b"y", ("192.0.2.1", 40000))]


def test_udp_source_verdict_cache_is_bounded() -> None:
    protocol, _, _ = udp_echo(EchoLimits(udp_max_sources=50))
    for i in range(1000):
        protocol.datagramReceived(b"x", (f"10.0.{i // 256}.{i % 256}", 40000))
    assert len(protocol.sources) <= 50


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_connections": 0},
        {"max_connections_per_peer": -1},
        {"idle_timeout": 0},
        {"udp_rate": 0},
    ],
)
def test_limits_reject_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        EchoLimits(**kwargs)


def test_protocol_class_is_the_factory_protocol() -> None:
    assert TCPEchoFactory.protocol is TCPEchoProtocol


def test_udp_echo_on_the_in_memory_network_with_loss() -> None:
    from netsvc.testing import FakeUDPReactor, LinkConditions, RecordingDatagramProtocol

    reactor = FakeUDPReactor(LinkConditions(loss=0.2, delay=0.001), seed=4)
    reactor.listenUDP(7, UDPEchoProtocol(reactor), "127.0.0.1", 65536)
    client = RecordingDatagramProtocol()
    port = reactor.listenUDP(0, client, "127.0.0.1", 65536)
    for index in range(1000):
        port.write(b"%04d" % index, ("127.0.0.1", 7))
    reactor.run_until(lambda: False, timeout=1)  # deliver everything, step by step
    echoed = [data for data, _ in client.received]
    assert 500 < len(echoed) < 750  # about 0.8 * 0.8 of them make the round trip
    assert all(data.isdigit() and len(data) == 4 for data in echoed)


def test_package_exposes_subpackages_lazily() -> None:
    import netsvc

    assert netsvc.echo.echo_service is not None
    assert netsvc.__version__
    with pytest.raises(AttributeError):
        netsvc.nonexistent  # noqa: B018


def test_a_source_over_the_udp_rate_is_reported_once_and_when_it_is_back() -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        protocol, transport, clock = udp_echo(EchoLimits(udp_rate=10, udp_burst=5))
        for _ in range(50):
            protocol.datagramReceived(b"x", ("192.0.2.1", 40000))
        protocol.datagramReceived(b"x", ("255.255.255.255", 40000))  # never answered
        reported = [e for e in events if "source" in e]
        clock.advance(1)
        protocol.datagramReceived(b"x", ("192.0.2.1", 40000))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [(e["source"], e["log_level"].name) for e in reported] == [("192.0.2.1", "warn")]
    back = [e for e in events if "source" in e][1:]
    assert [(e["source"], e["count"]) for e in back] == [("192.0.2.1", 45)]
    assert len(transport.written) == 6

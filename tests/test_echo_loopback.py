"""Echo over real sockets on 127.0.0.1 and ::1 (port 0), driven from client threads."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.threads import deferToThread

from netsvc.echo import EchoLimits, TCPEchoFactory, UDPEchoProtocol
from netsvc.listening import UDP_MAX_PACKET_SIZE
from tests.support import ipv6_loopback_available

T = TypeVar("T")
reactor: Any = global_reactor

HOSTS = ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(
    not ipv6_loopback_available(), reason="this machine has no IPv6 loopback"))]


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    result: T = await deferToThread(function, *args)
    return result


@asynccontextmanager
async def tcp_echo_on(host: str) -> AsyncIterator[int]:
    """A netsvc TCP echo server on ``host``, port 0; yields the port number."""
    factory = TCPEchoFactory(reactor)
    port = reactor.listenTCP(0, factory, interface=host)
    try:
        yield port.getHost().port
    finally:
        await port.stopListening()
        for protocol in list(factory.connections):
            protocol.transport.abortConnection()


def _half_close_round_trip(host: str, port: int, size: int) -> tuple[int, bytes, bytes]:
    payload = os.urandom(1 << 20) * (size >> 20)
    sock = socket.create_connection((host, port), timeout=30)

    def send() -> None:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    received = hashlib.sha256()
    total = 0
    while chunk := sock.recv(1 << 20):
        received.update(chunk)
        total += len(chunk)
    sender.join()
    sock.close()
    return total, received.digest(), hashlib.sha256(payload).digest()


@pytest.mark.parametrize("host", HOSTS)
@pytest_twisted.ensureDeferred
async def test_tcp_half_close_returns_every_byte(host: str) -> None:
    async with tcp_echo_on(host) as port:
        total, got, sent = await in_thread(_half_close_round_trip, host, port, 20 << 20)
    assert total == 20 << 20
    assert got == sent


def _send_without_reading(host: str, port: int, seconds: float) -> int:
    """Send for ``seconds`` and never read; return how many bytes the kernel took."""
    sock = socket.create_connection((host, port), timeout=5)
    sock.setblocking(False)
    chunk = b"x" * 65536
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and sent < 1 << 30:
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            time.sleep(0.01)
    sock.close()
    return sent


@pytest_twisted.ensureDeferred
async def test_tcp_client_that_never_reads_is_stopped_by_back_pressure() -> None:
    async with tcp_echo_on("127.0.0.1") as port:
        sent = await in_thread(_send_without_reading, "127.0.0.1", port, 2.0)
    # Without back-pressure the server would read (and buffer) everything: hundreds of MB
    # in two seconds. With it, only the kernel socket buffers and one transport buffer fill.
    assert sent < 48 << 20, f"the server accepted {sent >> 20} MiB from a client that never reads"


def _udp_round_trips(host: str, port: int, sizes: list[int]) -> list[bool]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        results = []
        for size in sizes:
            data = os.urandom(size)
            sock.sendto(data, (host, port))
            reply, _ = sock.recvfrom(70000)
            results.append(reply == data)
        return results


@pytest.mark.parametrize("host", HOSTS)
@pytest_twisted.ensureDeferred
async def test_udp_datagrams_of_every_size_come_back_intact(host: str) -> None:
    protocol = UDPEchoProtocol(reactor, EchoLimits())
    port = reactor.listenUDP(0, protocol, interface=host, maxPacketSize=UDP_MAX_PACKET_SIZE)
    try:
        limit = 65507 if ":" not in host else 65527
        sizes = [0, 1, 8188, 8192, 8193, 32768, limit]
        assert await in_thread(_udp_round_trips, host, port.getHost().port, sizes) == [
            True
        ] * len(sizes)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_udp_dual_stack_answers_ipv4_peers() -> None:
    if not ipv6_loopback_available():
        pytest.skip("this machine has no IPv6 loopback")
    protocol = UDPEchoProtocol(reactor, EchoLimits())
    port = reactor.listenUDP(0, protocol, interface="::", maxPacketSize=UDP_MAX_PACKET_SIZE)
    try:
        assert await in_thread(_udp_round_trips, "127.0.0.1", port.getHost().port, [100]) == [
            True
        ]
    finally:
        await port.stopListening()

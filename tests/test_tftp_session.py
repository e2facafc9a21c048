"""EngineSession details that the end-to-end tests do not isolate: a receiver's socket."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet import reactor

from netsvc.tftp.engine import BlockReceiver
from netsvc.tftp.session import EngineSession
from netsvc.udpport import QuietUDPPort, listen_udp_quietly


def rmem_max() -> int:
    with open("/proc/sys/net/core/rmem_max") as limit:
        return int(limit.read())


@pytest.fixture
def receiving_session() -> Iterator[EngineSession]:
    session = EngineSession(reactor)
    session.port = listen_udp_quietly(reactor, 0, session, "127.0.0.1")
    yield session
    session.port.stopListening()


def start_receiver(session: EngineSession, blksize: int, windowsize: int) -> None:
    session.peer = ("127.0.0.1", 9)
    session.engine = BlockReceiver(
        lambda datagram: None, lambda payload: True, now=0.0, preamble=None,
        blksize=blksize, windowsize=windowsize,
    )
    session.fit_packet_size()


def test_a_window_receiver_holds_two_windows_without_loss(
    receiving_session: EngineSession,
) -> None:
    # 8 KiB datagrams cost ~17 KiB of receive buffer each: Linux's default buffer holds
    # 12, so without sizing, the tail of every 16-block window was lost (and waited for a
    # timeout: 50 s instead of 0.4 s for 64 MiB, measured).
    if rmem_max() < 2 * 16 * 18 * 1024 // 2:
        pytest.skip("net.core.rmem_max is too small for two windows of 8 KiB blocks")
    start_receiver(receiving_session, blksize=8192, windowsize=16)
    port = receiving_session.port
    assert isinstance(port, QuietUDPPort) and port.maxPacketSize == 8192 + 5
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(32):
            sender.sendto(bytes(8196), port.socket.getsockname())
    finally:
        sender.close()
    port.socket.setblocking(False)
    queued = 0
    while True:
        try:
            port.socket.recv(65536)
        except BlockingIOError:
            break
        queued += 1
    assert queued == 32


def test_a_lockstep_receiver_keeps_the_default_buffer(receiving_session: EngineSession) -> None:
    port = receiving_session.port
    assert isinstance(port, QuietUDPPort)
    before = port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    start_receiver(receiving_session, blksize=8192, windowsize=1)
    assert port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == before
    assert not port.coalescing

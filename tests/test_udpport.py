"""QuietUDPPort on loopback: plain reads, and coalesced reads cut back into datagrams."""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import globalLogPublisher

from netsvc.spin import Spinner
from netsvc.udpport import QuietUDPPort, SocketSet, connect_peer_socket, listen_udp_quietly

UDP_SEGMENT = 103  # linux/udp.h


class Recorder(DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []
        self.on_first: Any = None

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.datagrams.append(datagram)
        if self.on_first is not None:
            hook, self.on_first = self.on_first, None
            hook()


@pytest.fixture
def recorder() -> Iterator[tuple[QuietUDPPort, Recorder]]:
    protocol = Recorder()
    port = listen_udp_quietly(reactor, 0, protocol, "127.0.0.1")
    assert isinstance(port, QuietUDPPort)
    yield port, protocol
    port.stopListening()


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield sock
    sock.close()


def send_segmented(sock: socket.socket, datagrams: list[bytes], addr: Any) -> None:
    """One sendmsg with segmentation offload: the kernel cuts it at len(datagrams[0])."""
    control = [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("H", len(datagrams[0])))]
    try:
        sock.sendmsg([b"".join(datagrams)], control, 0, addr)
    except OSError as error:
        pytest.skip(f"no UDP segmentation offload here: {error}")


def burst(count: int, size: int, last: int) -> list[bytes]:
    out = [bytes([n]) * size for n in range(count)]
    out[-1] = out[-1][:last]
    return out


def test_plain_reads_deliver_datagrams_as_sent(
    recorder: tuple[QuietUDPPort, Recorder], sender: socket.socket
) -> None:
    port, protocol = recorder
    datagrams = [b"", b"x" * 1000, b"y" * 65507]
    for datagram in datagrams:
        sender.sendto(datagram, port.socket.getsockname())
    port.doRead()
    assert protocol.datagrams == datagrams


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="UDP_GRO is Linux-only")
def test_coalesced_reads_are_cut_back_into_the_datagrams_sent(
    recorder: tuple[QuietUDPPort, Recorder], sender: socket.socket
) -> None:
    port, protocol = recorder
    if not port.coalesce():
        pytest.skip("no UDP generic receive offload in this kernel")
    datagrams = burst(16, 1472, last=300)
    send_segmented(sender, datagrams, port.socket.getsockname())
    sender.sendto(b"single", port.socket.getsockname())
    port.doRead()
    assert protocol.datagrams == [*datagrams, b"single"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="UDP_GRO is Linux-only")
def test_coalescing_switched_on_mid_read_applies_to_the_next_read(
    recorder: tuple[QuietUDPPort, Recorder], sender: socket.socket
) -> None:
    # A TFTP client turns coalescing on from its handler of the server's first reply,
    # inside the port's read loop; the next window may already be queued, coalesced.
    port, protocol = recorder
    address = port.socket.getsockname()
    datagrams = burst(7, 8196, last=8196)

    def switch_on_then_receive_a_burst() -> None:
        if not port.coalesce():
            pytest.skip("no UDP generic receive offload in this kernel")
        send_segmented(sender, datagrams, address)

    protocol.on_first = switch_on_then_receive_a_burst
    port.maxPacketSize = 8197  # what a receiver of blksize 8192 sets
    sender.sendto(b"oack", address)
    port.doRead()
    assert protocol.datagrams == [b"oack", *datagrams]


# -- the socket set and the peer socket -------------------------------------------------------


class FakeReactor:
    """Records addReader/removeReader: the set must be a reader only while it has sockets."""

    def __init__(self) -> None:
        self.readers: list[object] = []

    def addReader(self, reader: object) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: object) -> None:
        self.readers.remove(reader)


def udp_pair() -> tuple[socket.socket, socket.socket]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return receiver, sender


def test_socket_set_is_a_reader_only_while_it_holds_sockets_and_calls_ready_handlers() -> None:
    fake = FakeReactor()
    sockets = SocketSet(fake)
    (a, a_sender), (b, b_sender) = udp_pair(), udp_pair()
    got: list[bytes] = []
    try:
        sockets.add(a.fileno(), lambda: got.append(a.recv(100)))
        sockets.add(b.fileno(), lambda: got.append(b.recv(100)))
        assert fake.readers == [sockets] and len(sockets) == 2
        a_sender.sendto(b"to a", a.getsockname())
        b_sender.sendto(b"to b", b.getsockname())
        time.sleep(0.05)
        sockets.doRead()
        assert sorted(got) == [b"to a", b"to b"]
        sockets.remove(a.fileno())
        sockets.remove(a.fileno())  # twice is harmless
        assert fake.readers == [sockets]
        sockets.remove(b.fileno())
        assert fake.readers == [] and len(sockets) == 0
    finally:
        for sock in (a, a_sender, b, b_sender):
            sock.close()


def test_socket_set_logs_a_failing_handler_and_still_runs_the_others() -> None:
    sockets = SocketSet(FakeReactor())
    (a, a_sender), (b, b_sender) = udp_pair(), udp_pair()
    got: list[bytes] = []
    failures: list[object] = []

    def broken() -> None:
        a.recv(100)
        raise RuntimeError("handler bug")

    observer = failures.append
    globalLogPublisher.addObserver(observer)
    try:
        sockets.add(a.fileno(), broken)
        sockets.add(b.fileno(), lambda: got.append(b.recv(100)))
        a_sender.sendto(b"x", a.getsockname())
        b_sender.sendto(b"y", b.getsockname())
        time.sleep(0.05)
        sockets.doRead()
    finally:
        globalLogPublisher.removeObserver(observer)
        for sock in (a, a_sender, b, b_sender):
            sock.close()
    assert got == [b"y"]
    assert any("handler bug" in str(event.get("log_failure")) for event in failures)  # type: ignore[attr-defined]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's SO_REUSEPORT rules")
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_peer_socket_gets_the_peers_datagrams_and_the_port_everyone_elses(host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    protocol = Recorder()
    port = listen_udp_quietly(reactor, 0, protocol, host)
    assert isinstance(port, QuietUDPPort)
    peer, stranger = (socket.socket(family, socket.SOCK_DGRAM) for _ in range(2))
    peer.bind((host, 0))
    peer_socket = connect_peer_socket(port, peer.getsockname()[:2])
    try:
        assert peer_socket is not None
        address = port.socket.getsockname()
        assert peer_socket.getsockname() == address
        for n in range(3):
            peer.sendto(b"peer %d" % n, address)
            stranger.sendto(b"stranger %d" % n, address)
        time.sleep(0.05)
        port.doRead()
        assert protocol.datagrams == [b"stranger 0", b"stranger 1", b"stranger 2"]
        assert [peer_socket.recv(100) for _ in range(3)] == [b"peer 0", b"peer 1", b"peer 2"]
        peer_socket.send(b"reply")
        assert peer.recvfrom(100) == (b"reply", address)  # from the transfer's own port
        # Ports bound later by anyone (no SO_REUSEPORT) never land on the shared one.
        later = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(300)]
        try:
            for sock in later:
                sock.bind((host, 0))
            assert address[1] not in {sock.getsockname()[1] for sock in later}
        finally:
            for sock in later:
                sock.close()
    finally:
        if peer_socket is not None:
            peer_socket.close()
        peer.close()
        stranger.close()
        port.stopListening()


def test_socket_set_spins_for_the_next_datagram_and_serves_it_in_the_same_visit() -> None:
    sockets = SocketSet(FakeReactor(), Spinner(limit=0.5))
    sockets.LONGEST_VISIT = 1.0
    receiver, sender = udp_pair()
    got: list[bytes] = []

    def answer() -> None:
        got.append(receiver.recv(100))
        if len(got) == 1:  # the "peer" answers a moment later, while the set spins
            threading.Timer(0.01, sender.sendto, (b"second", receiver.getsockname())).start()

    try:
        sockets.add(receiver.fileno(), answer)
        sender.sendto(b"first", receiver.getsockname())
        time.sleep(0.05)
        started = time.perf_counter()
        sockets.doRead()
        assert got == [b"first", b"second"]  # one visit from the reactor
        # Then nothing more: the spin ends without a catch after its limit.
        assert 0.5 <= time.perf_counter() - started < 2
    finally:
        receiver.close()
        sender.close()


def test_socket_set_visits_are_bounded_while_datagrams_keep_coming() -> None:
    sockets = SocketSet(FakeReactor(), Spinner(limit=0.5))
    sockets.LONGEST_VISIT = 0.05
    receiver, sender = udp_pair()
    address = receiver.getsockname()

    def answer() -> None:
        receiver.recv(100)
        sender.sendto(b"more", address)  # always something new

    try:
        sockets.add(receiver.fileno(), answer)
        sender.sendto(b"start", address)
        time.sleep(0.05)
        started = time.perf_counter()
        sockets.doRead()
        assert time.perf_counter() - started < 0.5  # back to the reactor after ~0.05 s
    finally:
        receiver.close()
        sender.close()

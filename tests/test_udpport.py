"""QuietUDPPort on loopback: plain reads, and coalesced reads cut back into datagrams."""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol

from netsvc.udpport import QuietUDPPort, listen_udp_quietly

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

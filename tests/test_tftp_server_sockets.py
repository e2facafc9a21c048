"""The real server's transfer sockets, driven packet by packet from plain sockets.

A download talks to its client through a socket connected to that client
(netsvc.udpport.connect_peer_socket) while the transfer's port still answers everybody
else: these tests check both sides of that split on loopback, against ``twistd
netsvc-tftp`` in a process of its own.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop_support import HOST, TFTPServer

BLOCKS = 3
DATA = bytes(range(256)) * 5  # 1,280 bytes: blocks of 512, 512 and 256


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TFTPServer]:
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(DATA)
    running = TFTPServer(root, tmp_path / "twistd.log").start()
    yield running
    running.stop()


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.settimeout(5)
    return sock


def ack(block: int) -> bytes:
    return struct.pack("!HH", 4, block)


def test_a_stranger_gets_error_5_while_the_download_goes_on(server: TFTPServer) -> None:
    client, stranger = udp_socket(), udp_socket()
    try:
        client.sendto(b"\x00\x01f\x00octet\x00", (HOST, server.port))
        received = b""
        reply, transfer = client.recvfrom(1024)
        for block in range(1, BLOCKS + 1):
            assert reply[:4] == struct.pack("!HH", 3, block)
            received += reply[4:]
            if block == 1:
                # A forged ACK from elsewhere: ERROR 5 from the transfer's port, and
                # the transfer neither moves on nor ends.
                stranger.sendto(ack(1), transfer)
                error, source = stranger.recvfrom(1024)
                assert error[:4] == b"\x00\x05\x00\x05" and source == transfer
                client.settimeout(0.3)
                with pytest.raises(TimeoutError):
                    client.recvfrom(1024)  # no DATA 2 for the stranger's ACK
                client.settimeout(5)
            client.sendto(ack(block), transfer)
            if block < BLOCKS:
                reply, source = client.recvfrom(1024)
                if reply[:4] == struct.pack("!HH", 3, block):  # our wait timed it out
                    reply, source = client.recvfrom(1024)
                assert source == transfer  # one TID for the whole transfer
        assert received == DATA
    finally:
        client.close()
        stranger.close()
    deadline = time.monotonic() + 5
    while not server.events() and time.monotonic() < deadline:
        time.sleep(0.02)  # the event is logged right after the last ACK arrives
    assert [(e["outcome"], int(e["bytes"])) for e in server.events()] == [("complete", len(DATA))]

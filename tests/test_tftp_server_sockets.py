"""The real server's transfer sockets, driven packet by packet from plain sockets.

A download talks to its client through a socket connected to that client
(netsvc.udpport.connect_peer_socket) while the transfer's port still answers everybody
else: these tests check both sides of that split on loopback, against ``twistd
netsvc-tftp`` in a process of its own.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.task import deferLater

from netsvc.tftp import server as server_module
from netsvc.tftp.backend import FilesystemBackend, MemoryWriter
from netsvc.tftp.client import _ClientSession, download
from netsvc.tftp.downloader import BOARD_SIZE, DownloadJob, DownloadReport
from netsvc.tftp.engine import Outcome, TransferStats
from netsvc.tftp.handoff import JobProgress
from netsvc.tftp.server import tftp_service
from netsvc.udpport import QuietUDPPort, socket_set_for
from tests.interop_support import HOST, TFTPServer, read_whole

reactor: Any = global_reactor

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


@pytest.fixture
def writable(tmp_path: Path) -> Iterator[tuple[TFTPServer, Path]]:
    """A server that takes uploads, and its (empty) root."""
    root = tmp_path / "root"
    root.mkdir()
    running = TFTPServer(root, tmp_path / "twistd.log", "--writable").start()
    yield running, root
    running.stop()


def upload_block_1(client: socket.socket, port: int) -> tuple[str, int]:
    """Start an upload without options and send its first full block; the transfer's
    address, once block 1 is acknowledged."""
    client.sendto(b"\x00\x02up\x00octet\x00", (HOST, port))
    reply, transfer = client.recvfrom(1024)
    assert reply == ack(0)
    client.sendto(struct.pack("!HH", 3, 1) + bytes(512), transfer)
    assert client.recvfrom(1024) == (ack(1), transfer)
    address: tuple[str, int] = transfer
    return address


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


def test_a_client_that_leaves_before_its_last_ack_ends_the_download_at_once(
    server: TFTPServer,
) -> None:
    """curl exits as soon as it has the last block; when its final ACK is lost, our
    retransmission comes back as ICMP port unreachable. That ends the transfer (not the
    30-second idle timeout), logged as peer-gone with the bytes acknowledged."""
    client = udp_socket()
    try:
        client.sendto(b"\x00\x01f\x00octet\x00", (HOST, server.port))
        for block in range(1, BLOCKS + 1):
            reply, transfer = client.recvfrom(1024)
            assert reply[:4] == struct.pack("!HH", 3, block)
            if block < BLOCKS:
                client.sendto(ack(block), transfer)
    finally:
        client.close()  # the last block is never acknowledged
    started = time.monotonic()
    while not server.events() and time.monotonic() - started < 10:
        time.sleep(0.02)
    assert time.monotonic() - started < 3
    assert [(e["outcome"], int(e["bytes"])) for e in server.events()] == [
        ("peer-gone", 2 * 512)
    ]


def wait_for_events(server: TFTPServer, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while len(server.events()) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return [e.groupdict() for e in server.events()]


def test_a_request_from_the_port_of_a_finished_upload_is_served(
    writable: tuple[TFTPServer, Path],
) -> None:
    """The uploader exits; a new client gets its port while the finished upload still
    dallies there (busy hosts reuse ports soon). Its request is no repeat of the upload's
    WRQ: it gets a transfer of its own."""
    running, root = writable
    client = udp_socket()
    try:
        transfer = upload_block_1(client, running.port)
        client.sendto(struct.pack("!HH", 3, 2) + b"end", transfer)
        assert client.recvfrom(1024) == (ack(2), transfer)
        assert (root / "up").read_bytes() == bytes(512) + b"end"
        data, reader = read_whole(client, running.port, b"\x00\x01up\x00octet\x00")
        assert data == bytes(512) + b"end" and reader != transfer
    finally:
        client.close()
    events = wait_for_events(running, 2)
    assert [e["outcome"] for e in events] == ["complete", "complete"]


@pytest.mark.parametrize("again", ["another-request", "the-same-request-later"])
def test_a_new_request_from_a_download_clients_port_ends_that_download(
    server: TFTPServer, again: str
) -> None:
    """The client of a download left mid-way and a new one has its port. A different
    request, or the same one once the first client had been heard from a while ago
    (REPEAT_WINDOW): no repeat, so the old download ends (sending nothing more to that
    port) and the new request is served."""
    client = udp_socket()
    try:
        client.sendto(b"\x00\x01f\x00octet\x00", (HOST, server.port))
        reply, first = client.recvfrom(1024)
        client.sendto(ack(1), first)  # heard from: block 1 acknowledged
        reply, _ = client.recvfrom(1024)
        assert reply[:4] == struct.pack("!HH", 3, 2)
        if again == "another-request":
            request = b"\x00\x01f\x00OCTET\x00"  # the same file, other bytes
        else:
            time.sleep(server_module.REPEAT_WINDOW + 0.1)
            request = b"\x00\x01f\x00octet\x00"
        data, second = read_whole(client, server.port, request)
        assert second != first and data == DATA
    finally:
        client.close()
    events = wait_for_events(server, 2)
    assert [(e["outcome"], int(e["bytes"])) for e in events] == [
        ("peer-gone", 512), ("complete", len(DATA))
    ]


def test_the_same_request_soon_after_is_a_repeat(server: TFTPServer) -> None:
    client = udp_socket()
    try:
        client.sendto(b"\x00\x01f\x00octet\x00", (HOST, server.port))
        reply, first = client.recvfrom(1024)
        client.sendto(b"\x00\x01f\x00octet\x00", (HOST, server.port))  # repeated
        client.sendto(ack(1), first)
        for block in (2, 3):
            reply, source = client.recvfrom(1024)
            assert (reply[:4], source) == (struct.pack("!HH", 3, block), first)
            client.sendto(ack(block), first)
    finally:
        client.close()
    assert [e["outcome"] for e in wait_for_events(server, 1)] == ["complete"]
    time.sleep(0.2)
    assert len(server.events()) == 1  # no second transfer


def test_an_upload_repeats_its_ack_when_the_next_block_does_not_come(
    writable: tuple[TFTPServer, Path],
) -> None:
    """curl's own timer would take 5 s per lost block: the server asks again on its own
    adaptive timer (BlockReceiver's repeat_ack), a few times."""
    running, _ = writable
    client = udp_socket()
    try:
        transfer = upload_block_1(client, running.port)
        started = time.monotonic()
        assert client.recvfrom(1024) == (ack(1), transfer)  # block 2 "lost": asked again
        assert time.monotonic() - started < 1.0
    finally:
        client.close()


def test_an_uploads_oack_is_repeated_for_a_repeated_request_not_on_a_timer(
    writable: tuple[TFTPServer, Path],
) -> None:
    """curl reads a fresh block of its file for every OACK it hears: a repeat on the
    server's timer after curl's DATA 1 was lost shifted the upload by a block (found
    through 10 % loss: 1 MiB stored 512 bytes short, every block the next one's)."""
    running, root = writable
    client = udp_socket()
    try:
        request = b"\x00\x02up\x00octet\x00blksize\x001024\x00"
        client.sendto(request, (HOST, running.port))
        oack, transfer = client.recvfrom(1024)
        assert oack[:2] == b"\x00\x06"
        client.settimeout(1.5)  # more than the server's first timeout (1 s)
        with pytest.raises(TimeoutError):
            client.recvfrom(1024)
        client.settimeout(5)
        client.sendto(request, (HOST, running.port))  # it heard nothing: it asks again
        assert client.recvfrom(1024) == (oack, transfer)
        client.sendto(struct.pack("!HH", 3, 1) + bytes(100), transfer)
        assert client.recvfrom(1024) == (ack(1), transfer)
        # With blksize 512 (and no window) the timer repeats it as ACK 0 instead.
        plain = udp_socket()
        try:
            plain.sendto(b"\x00\x02up2\x00octet\x00tsize\x00100\x00", (HOST, running.port))
            first, transfer = plain.recvfrom(1024)
            assert first[:2] == b"\x00\x06"
            assert plain.recvfrom(1024) == (ack(0), transfer)
        finally:
            plain.close()
    finally:
        client.close()
    assert (root / "up").read_bytes() == bytes(100)


def test_an_upload_whose_client_has_gone_ends_at_once_and_stores_nothing(
    writable: tuple[TFTPServer, Path],
) -> None:
    """The server repeats its ACK when the next block does not come (repeat_ack); with
    the client's port closed, the repeat comes back as ICMP port unreachable, which ends
    the upload (peer-gone), not the 30-second idle timeout. The partial file is gone."""
    running, root = writable
    client = udp_socket()
    try:
        upload_block_1(client, running.port)
    finally:
        client.close()  # gone before block 2
    started = time.monotonic()
    while not running.events() and time.monotonic() - started < 10:
        time.sleep(0.02)
    assert time.monotonic() - started < 3
    assert [(e["outcome"], e["direction"]) for e in running.events()] == [
        ("peer-gone", "write")
    ]
    assert list(root.iterdir()) == []  # neither the file nor its temporary one


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_finished_transfers_leave_no_socket_in_the_reactors_socket_set(
    tmp_path: Path,
) -> None:
    # The set dispatches by descriptor number, which the system hands out again as soon
    # as a socket is closed: a transfer must take its sockets out before closing them.
    (tmp_path / "f").write_bytes(DATA * 100)
    service = tftp_service(reactor, FilesystemBackend(str(tmp_path)), port=0, interface=HOST)
    service.startService()
    try:
        port = next(iter(service)).port.getHost().port
        for windowsize in (None, 4):
            writer = MemoryWriter()
            result = await download(
                reactor, HOST, "f", writer, port=port, blksize=1024, windowsize=windowsize
            )
            assert result.bytes == len(DATA) * 100 and writer.data == DATA * 100
        await deferLater(reactor, 0.2)  # the server reads the last ACK after the client ends
        sockets = socket_set_for(reactor)
        assert sockets is not None
        # What is left are the client's ports, which dally to re-acknowledge a repeated
        # last block; none of the server's (two per download: port and peer socket).
        owners = [getattr(handler, "__self__", None) for handler in sockets.handlers()]
        assert owners and all(isinstance(o, QuietUDPPort) for o in owners)
        assert all(isinstance(o.protocol, _ClientSession) for o in owners)  # type: ignore[union-attr]
    finally:
        stopped = service.stopService()
        if stopped is not None:
            await stopped


class JobCatcher:
    """A download helper that only notes the jobs it is offered and takes none (the
    server then serves them itself)."""

    def __init__(self) -> None:
        self.offered: list[DownloadJob] = []
        self.jobs = JobProgress(mmap.mmap(-1, BOARD_SIZE))  # for the server's watchdog
        self.gone: str | None = None

    def hand_over(self, job: DownloadJob, peer_socket: socket.socket, file_fd: int) -> None:
        self.offered.append(job)

    def publish_load(self, transfers: int) -> None:
        pass


@pytest.mark.parametrize("follow", [True, False], ids=["default", "no-cpu-follow"])
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_a_client_on_this_host_gets_a_worker_that_follows_its_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, follow: bool
) -> None:
    (tmp_path / "f").write_bytes(DATA * 100)
    asked: list[tuple[str, str]] = []

    def on_this_host(peer: str, local: str) -> bool:
        asked.append((peer, local))
        return True

    monkeypatch.setattr(server_module, "is_on_this_host", on_this_host)
    service = tftp_service(reactor, FilesystemBackend(str(tmp_path)), port=0, interface=HOST)
    service.startService()
    try:
        listening = next(iter(service)).port
        catcher = JobCatcher()
        listening.protocol.helper = catcher
        listening.protocol.follow_client_cpu = follow
        writer = MemoryWriter()
        try:
            await download(reactor, HOST, "f", writer, port=listening.getHost().port, blksize=512)
        finally:
            listening.protocol.helper = None  # there is no process to stop
        assert writer.data == DATA * 100
        assert [job.follow_client_cpu for job in catcher.offered] == [follow]
        assert asked == ([(HOST, HOST)] if follow else [])
    finally:
        stopped = service.stopService()
        if stopped is not None:
            await stopped


class ReportingHelper(JobCatcher):
    """A download helper whose "worker" ends each download at once with the report the
    test gives (:attr:`floor` as the timer floor it learned)."""

    def __init__(self, floor: float) -> None:
        super().__init__()
        self.floor = floor

    def hand_over(self, job: DownloadJob, peer_socket: socket.socket, file_fd: int) -> int:
        self.offered.append(job)
        read_end, write_end = os.pipe()
        stats = TransferStats(started=0.0, finished=0.0, blocks=100, bytes=len(DATA) * 100)
        report = DownloadReport(Outcome.COMPLETE, stats, os.getpid(), self.floor)
        os.write(write_end, report.encode())
        os.close(write_end)
        return read_end


@pytest.mark.parametrize(("learned", "expected"), [(0.08, 0.08), (0.005, 0.005), (5.0, 0.2)])
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_the_next_download_for_a_host_starts_from_the_floor_the_last_one_learned(
    tmp_path: Path, learned: float, expected: float
) -> None:
    (tmp_path / "f").write_bytes(DATA * 100)
    service = tftp_service(reactor, FilesystemBackend(str(tmp_path)), port=0, interface=HOST)
    service.startService()
    clients = [udp_socket(), udp_socket()]
    try:
        listening = next(iter(service)).port
        server = listening.protocol
        helper = server.helper = ReportingHelper(learned)
        request = b"\x00\x01f\x00octet\x00blksize\x00512\x00"
        for client in clients:
            client.sendto(request, (HOST, listening.getHost().port))
            for _ in range(100):  # the report is read and the transfer ends
                await deferLater(reactor, 0.01)
                if not server.transfers:
                    break
        server.helper = None  # there is no process to stop
        first, second = (job.sender.min_rto for job in helper.offered)
        assert first == server.limits.min_rto == 0.005
        assert second == expected  # what the first learned, at most SHARED_CAP
    finally:
        for client in clients:
            client.close()
        stopped = service.stopService()
        if stopped is not None:
            await stopped

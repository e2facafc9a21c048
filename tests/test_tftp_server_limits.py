"""The TFTP server's limits at work: time limit, session cap, port range, interrupted uploads.

Clients here are hand-driven (a :class:`~netsvc.testing.RecordingDatagramProtocol` that
sends what the test says) where a limit needs a client that misbehaves: one that ACKs
slowly, never ACKs, or stops sending mid-upload.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.logger import capturedLogs

from netsvc.testing import FakeUDPReactor, LinkConditions, RecordingDatagramProtocol
from netsvc.tftp.backend import TEMP_SUFFIX, BytesReader, FilesystemBackend, MemoryWriter
from netsvc.tftp.client import TFTPError, download, upload
from netsvc.tftp.downloader import SHUTDOWN_MESSAGE, TIME_LIMIT_MESSAGE
from netsvc.tftp.packets import ACK, DATA, ERROR, RRQ, WRQ, ErrorCode, encode_ack, parse
from netsvc.tftp.server import TFTPServer, TFTPServerLimits, tftp_service
from tests.support import free_port
from tests.tftp_support import SERVER_HOST, SERVER_PORT, MemoryBackend, fake_network, finish

FILE = random.Random(0).randbytes(1 << 20)


class Client(RecordingDatagramProtocol):
    """A hand-driven TFTP client: it records what it gets and sends what it is told to."""

    def __init__(self, reactor: Any, interface: str = SERVER_HOST) -> None:
        super().__init__()
        self.port = reactor.listenUDP(0, self, interface)

    @property
    def packets(self) -> list[Any]:
        return [parse(datagram) for datagram in self.datagrams]

    def of(self, kind: type) -> list[Any]:
        return [packet for packet in self.packets if isinstance(packet, kind)]

    @property
    def tid(self) -> tuple[str, int]:
        """The address of the transfer that answered (its first packet's source)."""
        return self.received[0][1]

    def send(self, packet: Any, addr: tuple[str, int] | None = None) -> None:
        self.port.write(packet.encode(), addr or self.tid)

    def ask(self, request: Any, server: tuple[str, int] = (SERVER_HOST, SERVER_PORT)) -> None:
        self.send(request, server)


class SlowDownloader(Client):
    """Acknowledges every DATA ``pace`` seconds after it came: slow, but never idle."""

    def __init__(self, reactor: Any, pace: float) -> None:
        super().__init__(reactor)
        self.reactor, self.pace = reactor, pace

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        super().datagramReceived(datagram, addr)
        packet = parse(datagram)
        if isinstance(packet, DATA):
            self.reactor.callLater(self.pace, self.port.write, encode_ack(packet.block), addr)


class StalledUploader(Client):
    """Uploads ``blocks`` full blocks of 512 bytes, then falls silent."""

    def __init__(self, reactor: Any, blocks: int) -> None:
        super().__init__(reactor)
        self.blocks = blocks

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        super().datagramReceived(datagram, addr)
        packet = parse(datagram)
        if isinstance(packet, ACK) and packet.block < self.blocks:
            self.send(DATA(packet.block + 1, b"n" * 512), addr)


def transfer_events(events: Any) -> list[Any]:
    return [event for event in events if "outcome" in event]


# -- max_duration ----------------------------------------------------------------------------


def test_a_slow_but_steady_download_is_ended_by_the_time_limit() -> None:
    limits = TFTPServerLimits(max_duration=10.0, idle_timeout=30.0)
    reactor, server, _ = fake_network({"f": FILE}, limits=limits)
    client = SlowDownloader(reactor, pace=0.5)  # 1 MiB at 512 bytes a block: 17 minutes
    with capturedLogs() as events:
        client.ask(RRQ("f"))
        ended = reactor.run_until(lambda: bool(client.of(ERROR)), timeout=60)
    assert ended and 10.0 <= reactor.seconds() < 10.1
    assert client.of(ERROR) == [ERROR(ErrorCode.NOT_DEFINED, TIME_LIMIT_MESSAGE)]
    blocks = {packet.block for packet in client.of(DATA)}
    assert len(blocks) >= 15  # it made progress all along: not the idle timeout
    assert not server.transfers and server.active == 0
    (event,) = transfer_events(events)
    assert (event["outcome"], event["error_code"], event["error_message"]) == (
        "local-error", ErrorCode.NOT_DEFINED, TIME_LIMIT_MESSAGE
    )
    assert 10.0 <= event["duration"] < 10.1 and event["bytes"] >= 15 * 512


# -- max_sessions ----------------------------------------------------------------------------


def test_the_global_session_cap_says_busy_until_a_transfer_ends() -> None:
    limits = TFTPServerLimits(max_sessions=2, max_sessions_per_client=None)
    reactor, server, _ = fake_network({"f": FILE[:5000]}, limits=limits)
    holders = [Client(reactor), Client(reactor)]  # they never ACK: their transfers wait
    for holder in holders:
        holder.ask(RRQ("f"))
    reactor.advance(0.1)
    assert server.active == 2 and all(holder.of(DATA) for holder in holders)

    with pytest.raises(TFTPError) as raised:
        finish(reactor, download(reactor, SERVER_HOST, "f", MemoryWriter(), port=SERVER_PORT))
    assert raised.value.remote and raised.value.code == ErrorCode.NOT_DEFINED
    assert "server busy" in raised.value.message
    assert server.counters["busy"] == 1

    holders[0].send(ERROR(ErrorCode.NOT_DEFINED, "enough"))
    reactor.advance(0)
    assert server.active == 1
    writer = MemoryWriter()
    finish(reactor, download(reactor, SERVER_HOST, "f", writer, port=SERVER_PORT))
    assert writer.data == FILE[:5000]
    assert list(server.transfers) == [(SERVER_HOST, holders[1].port.getHost().port)]
    assert server.active == 1 and server.counters["busy"] == 1


# -- port_range ------------------------------------------------------------------------------


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive UDP port numbers free on 127.0.0.1 a moment ago."""
    for _ in range(50):
        first = free_port(socket.SOCK_DGRAM)
        sockets = []
        try:
            for number in range(first, first + count):
                sockets.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                sockets[-1].bind(("127.0.0.1", number))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return first
    raise RuntimeError(f"no {count} consecutive free UDP ports")


async def until(predicate: Any, timeout: float = 5.0) -> None:
    """Let the real reactor run until ``predicate()`` holds (or fail after ``timeout``)."""
    from twisted.internet import reactor

    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("timed out waiting")


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_transfers_bind_inside_the_port_range_and_survive_its_exhaustion() -> None:
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor

    low = free_port_run(2)
    limits = TFTPServerLimits(port_range=(low, low + 1))
    server = TFTPServer(reactor, MemoryBackend({"f": FILE}), limits=limits, interface=SERVER_HOST)
    listener = reactor.listenUDP(0, server, SERVER_HOST, 65536)
    address = (SERVER_HOST, listener.getHost().port)
    clients = [Client(reactor) for _ in range(3)]
    try:
        with capturedLogs() as events:
            for client in clients[:2]:
                client.ask(RRQ("f"), address)
            await until(lambda: all(client.received for client in clients[:2]))
            assert sorted(client.tid[1] for client in clients[:2]) == [low, low + 1]
            clients[2].ask(RRQ("f"), address)  # every port of the range is taken
            await until(lambda: server.counters["requests"] == 3)
            await task.deferLater(reactor, 0.1, lambda: None)
        # Told "busy" from the listening port, as a full server says it.
        assert [packet.code for packet in clients[2].of(ERROR)] == [ErrorCode.NOT_DEFINED]
        assert clients[2].tid == address and server.active == 2
        assert [e["error"].port for e in events if "no port" in e.get("log_format", "")] == [low]
        assert [e["outcome"] for e in transfer_events(events)] == ["refused"]

        freed = clients[0].tid[1]
        clients[0].send(ERROR(ErrorCode.NOT_DEFINED, "enough"))
        await until(lambda: server.active == 1)
        await task.deferLater(reactor, 0.05, lambda: None)  # Twisted closes ports a turn later
        clients[2].ask(RRQ("f"), address)  # it tries again
        await until(lambda: bool(clients[2].of(DATA)))
        sources = {addr for datagram, addr in clients[2].received if datagram[:2] == b"\x00\x03"}
        assert sources == {(SERVER_HOST, freed)}
    finally:
        server.shutdown()
        for port in [listener, *(client.port for client in clients)]:
            await defer.maybeDeferred(port.stopListening)


def test_a_request_finding_the_port_range_full_is_told_so() -> None:
    limits = TFTPServerLimits(port_range=(50000, 50000))
    reactor, server, _ = fake_network({"f": FILE}, limits=limits)
    squatter = reactor.listenUDP(50000, RecordingDatagramProtocol(), SERVER_HOST)
    client = Client(reactor)
    client.ask(RRQ("f"))
    reactor.advance(0.5)
    assert not server.transfers and reactor.protocol_errors == []  # this much holds
    assert squatter.listening
    assert [packet.code for packet in client.of(ERROR)] == [ErrorCode.NOT_DEFINED]
    assert server.counters["busy"] == 1


# -- interrupted uploads to the filesystem -----------------------------------------------------


def in_this_thread(f: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *args)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "t.bin").write_bytes(b"the old file")
    return tmp_path


def temp_files(root: Path) -> list[Path]:
    return sorted(root.glob(f".t.bin.*{TEMP_SUFFIX}"))


def backend_for(root: Path) -> FilesystemBackend:
    return FilesystemBackend(root, writable=True, overwrite=True, run_in_thread=in_this_thread)


def test_stopping_the_service_mid_upload_removes_the_temp_file(root: Path) -> None:
    reactor = FakeUDPReactor(LinkConditions(delay=0.001))
    service = tftp_service(reactor, backend_for(root), port=SERVER_PORT, interface=SERVER_HOST)
    service.startService()
    sent = upload(reactor, SERVER_HOST, "t.bin", BytesReader(FILE), port=SERVER_PORT)
    assert reactor.run_until(
        lambda: any(path.stat().st_size > 50_000 for path in temp_files(root)), timeout=30
    )
    service.stopService()
    with pytest.raises(TFTPError) as raised:
        finish(reactor, sent)
    assert (raised.value.code, raised.value.message) == (ErrorCode.NOT_DEFINED, SHUTDOWN_MESSAGE)
    assert temp_files(root) == [] and (root / "t.bin").read_bytes() == b"the old file"
    assert sorted(os.listdir(root)) == ["t.bin"]


def test_a_client_silent_mid_upload_loses_it_after_the_idle_timeout(root: Path) -> None:
    limits = TFTPServerLimits(idle_timeout=5.0)
    reactor, server, _ = fake_network(limits=limits, backend=backend_for(root))
    client = StalledUploader(reactor, blocks=3)
    client.ask(WRQ("t.bin"))
    reactor.run_until(lambda: len(client.of(ACK)) == 4, timeout=5)  # ACK 0 to 3
    (temp,) = temp_files(root)
    assert temp.stat().st_size == 3 * 512 and server.transfers
    with capturedLogs() as events:
        assert reactor.run_until(lambda: not server.transfers, timeout=60)
    assert reactor.seconds() >= 5.0
    assert temp_files(root) == [] and (root / "t.bin").read_bytes() == b"the old file"
    assert sorted(os.listdir(root)) == ["t.bin"]
    assert [e["outcome"] for e in transfer_events(events)] == ["timed-out"]


def test_spare_workers_are_never_more_than_the_session_cap() -> None:
    # Downloads beyond max_sessions never run at once: workers kept for them would idle.
    for max_sessions, asked, kept in ((4, 32, 4), (None, 32, 32), (100, 32, 32), (0, 8, 0)):
        limits = TFTPServerLimits(max_sessions=max_sessions)
        server = TFTPServer(FakeUDPReactor(), MemoryBackend({}), limits=limits,
                            processes=True, spare_workers=asked)
        assert server.spare_workers == kept

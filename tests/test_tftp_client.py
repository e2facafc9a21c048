"""The TFTP client library in memory: against the netsvc server and against scripted servers
that misbehave, plus the local file writers and readers of netsvc.tftp.localfile."""

from __future__ import annotations

import errno
import io
import itertools
import os
import random
import socket
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure

from netsvc.testing import FakeUDPReactor, LinkConditions
from netsvc.tftp.backend import (
    AccessViolation,
    BackendError,
    BytesReader,
    FileExists,
    FileNotFound,
    MemoryWriter,
)
from netsvc.tftp.client import TFTPError, TransferResult, download, resolve, upload
from netsvc.tftp.localfile import (
    StdoutWriter,
    free_space,
    open_local_reader,
    open_local_writer,
)
from netsvc.tftp.options import Negotiated
from netsvc.tftp.packets import OACK, RRQ, WRQ, ErrorCode, Mode, encode_ack, encode_data, parse
from tests.tftp_support import SERVER_HOST, SERVER_PORT, fake_network, finish

# -- scripted servers -------------------------------------------------------------------------


class Transfer(DatagramProtocol):
    """One transfer of a :class:`ScriptedServer`, on its own new port (like a real server)."""

    noisy = False

    def __init__(self, server: ScriptedServer, client: tuple[str, int]) -> None:
        self.server = server
        self.client = client
        self.received: list[bytes] = []

    def send(self, datagram: bytes, to: tuple[str, int] | None = None) -> None:
        self.transport.write(datagram, to or self.client)  # type: ignore[union-attr]

    @property
    def number(self) -> int:
        return int(self.transport.getHost().port)  # type: ignore[union-attr]

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append(datagram)
        self.server.script.packet(self, datagram)


class ScriptedServer(DatagramProtocol):
    """Listens on 127.0.0.1:69; every request gets a new port whose answers ``script`` writes."""

    noisy = False

    def __init__(self, reactor: FakeUDPReactor, script: Script) -> None:
        self.reactor = reactor
        self.script = script
        self.requests: list[RRQ | WRQ] = []
        self.transfers: list[Transfer] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        request = parse(datagram)
        assert isinstance(request, RRQ | WRQ)
        self.requests.append(request)
        transfer = Transfer(self, (addr[0], addr[1]))
        self.reactor.listenUDP(0, transfer, SERVER_HOST, 65536)
        self.transfers.append(transfer)
        self.script.request(transfer, request)


class Script:
    """What a scripted server does: override :meth:`request` and :meth:`packet`."""

    def request(self, transfer: Transfer, request: RRQ | WRQ) -> None:
        pass

    def packet(self, transfer: Transfer, datagram: bytes) -> None:
        pass


class Sender(Script):
    """Serves ``data`` in lock-step, like a plain server, with knobs for misbehaving.

    ``oack``: options to answer a request with (None: plain DATA 1). ``wire(n)``: the block
    number put on the wire for block ``n``. ``copies``: how often each DATA is sent.
    """

    def __init__(
        self,
        data: bytes,
        *,
        blksize: int = 512,
        oack: list[tuple[str, str]] | None = None,
        wire: Callable[[int], int] = lambda n: n & 0xFFFF,
        copies: int = 1,
    ) -> None:
        self.data = data
        self.blksize = blksize
        self.oack = oack
        self.wire = wire
        self.copies = copies
        self.current = 0  # absolute number of the block last sent (0: the OACK)
        self.last = len(data) // blksize + 1

    def block(self, number: int) -> bytes:
        start = (number - 1) * self.blksize
        return encode_data(self.wire(number), self.data[start : start + self.blksize])

    def request(self, transfer: Transfer, request: RRQ | WRQ) -> None:
        if self.oack is not None:
            transfer.send(OACK(self.oack).encode())
        else:
            self.send_next(transfer)

    def send_next(self, transfer: Transfer) -> None:
        self.current += 1
        for _ in range(self.copies):
            transfer.send(self.block(self.current))

    def packet(self, transfer: Transfer, datagram: bytes) -> None:
        opcode, number = struct.unpack("!HH", datagram[:4])
        expected = 0 if self.current == 0 else self.wire(self.current)
        if opcode == 4 and number == expected and self.current < self.last:
            self.send_next(transfer)


class Receiver(Script):
    """Accepts an upload in lock-step; ``oack`` as for :class:`Sender`."""

    def __init__(self, *, blksize: int = 512, oack: list[tuple[str, str]] | None = None) -> None:
        self.blksize = blksize
        self.oack = oack
        self.data = bytearray()
        self.expected = 1

    def request(self, transfer: Transfer, request: RRQ | WRQ) -> None:
        transfer.send(OACK(self.oack).encode() if self.oack is not None else encode_ack(0))

    def packet(self, transfer: Transfer, datagram: bytes) -> None:
        opcode, number = struct.unpack("!HH", datagram[:4])
        if opcode == 3 and number == self.expected:
            self.data += datagram[4:]
            self.expected += 1
            transfer.send(encode_ack(number))


def scripted(script: Script, **reactor_kwargs: Any) -> tuple[FakeUDPReactor, ScriptedServer]:
    reactor = FakeUDPReactor(record=True, **reactor_kwargs)
    server = ScriptedServer(reactor, script)
    reactor.listenUDP(SERVER_PORT, server, SERVER_HOST, 65536)
    return reactor, server


def get(reactor: FakeUDPReactor, name: str = "f", writer: Any = None, **kwargs: Any) -> Any:
    writer = writer if writer is not None else MemoryWriter()
    return finish(reactor, download(reactor, SERVER_HOST, name, writer, port=SERVER_PORT, **kwargs))


def finish_long(reactor: FakeUDPReactor, deferred: defer.Deferred[Any]) -> Any:
    """:func:`finish` for transfers of many thousand round trips."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert reactor.run_until(lambda: bool(results), timeout=600, max_steps=10**7)
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failure_of(reactor: FakeUDPReactor, deferred: defer.Deferred[Any]) -> TFTPError:
    with pytest.raises(TFTPError) as raised:
        finish(reactor, deferred)
    return raised.value


def client_packets(reactor: FakeUDPReactor, server: ScriptedServer) -> list[bytes]:
    """Everything the client sent to the scripted server's transfer ports."""
    ports = {t.number for t in server.transfers}
    return [s.data for s in reactor.sent if s.dst[1] in ports]


def errors_in(datagrams: list[bytes]) -> list[int]:
    return [struct.unpack("!H", d[2:4])[0] for d in datagrams if d[:2] == b"\x00\x05"]


def no_client_port_left(reactor: FakeUDPReactor) -> bool:
    return all(
        isinstance(port.protocol, ScriptedServer | Transfer) or port.getHost().port == SERVER_PORT
        for port in reactor.udp_ports
    )


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


# -- against the netsvc server ----------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 70_000])
@pytest.mark.parametrize(
    "options",
    [{}, {"blksize": 1468}, {"blksize": 1024, "windowsize": 8}, {"options": False}],
    ids=["defaults", "blksize", "window", "plain"],
)
def test_download_and_upload_with_the_netsvc_server(size: int, options: dict[str, Any]) -> None:
    data = payload(size, size)
    reactor, _, backend = fake_network({"f": data})
    writer = MemoryWriter()
    result = get(reactor, "f", writer, **options)
    assert writer.data == data and writer.committed
    assert isinstance(result, TransferResult) and result.bytes == size
    assert result.server[0] == SERVER_HOST and result.server[1] != SERVER_PORT
    if options.get("options") is False:
        assert result.options == Negotiated()
    else:
        # (the server leaves "tsize 0" out: curl chokes on it)
        assert result.options.tsize == (size or None)
        assert result.options.blksize == options.get("blksize", 512)
    done = upload(reactor, SERVER_HOST, "up", BytesReader(data), port=SERVER_PORT, **options)
    result = finish(reactor, done)
    assert backend.files["up"] == data and result.bytes == size


def test_lossy_link_and_wrap_to_zero() -> None:
    data = payload(600 * 1024)
    conditions = LinkConditions(loss=0.05, duplicate=0.05, reorder=0.05, delay=0.001)
    reactor, _, _ = fake_network({"f": data}, conditions=conditions, seed=3)
    writer = MemoryWriter()
    done = download(reactor, SERVER_HOST, "f", writer, blksize=8, windowsize=16)
    result = finish_long(reactor, done)
    assert writer.data == data and result.retransmits > 0


def test_netascii_both_ways() -> None:
    text = b"one\ntwo\r\nthree\rfour\n"
    reactor, _, backend = fake_network({"t": text})
    writer = MemoryWriter()
    result = get(reactor, "t", writer, mode=Mode.NETASCII)
    assert writer.data == text and result.options.tsize is None
    finish(reactor, upload(reactor, SERVER_HOST, "u", BytesReader(text), mode=Mode.NETASCII))
    assert backend.files["u"] == text


def test_on_negotiated_tells_the_size_before_the_data() -> None:
    reactor, _, _ = fake_network({"f": payload(5000)})
    seen: list[tuple[Negotiated, int]] = []
    writer = MemoryWriter()
    get(reactor, "f", writer, on_negotiated=lambda n: seen.append((n, len(writer.data))))
    assert [(n.tsize, before) for n, before in seen] == [(5000, 0)]


@pytest.mark.parametrize(("name", "code"), [("missing", 1), ("secret", 2)])
def test_server_errors_are_remote_tftp_errors(name: str, code: int) -> None:
    reactor, _, _ = fake_network({})
    error = failure_of(reactor, download(reactor, SERVER_HOST, name, MemoryWriter()))
    assert (error.code, error.remote, error.timed_out) == (code, True, False)
    assert str(error).endswith(f"(server error {code})")


def test_tsize_beyond_max_size_is_refused_with_error_3_before_any_data() -> None:
    reactor, _server, _ = fake_network({"f": payload(100_000)}, record=True)
    writer = MemoryWriter()
    error = failure_of(reactor, download(reactor, SERVER_HOST, "f", writer, max_size=99_999))
    assert (error.code, error.remote) == (ErrorCode.DISK_FULL, False)
    assert writer.aborted and not writer.data
    data_sent = [s for s in reactor.sent if s.data[:2] == b"\x00\x03"]
    assert data_sent == []
    to_server = [s.data for s in reactor.sent if s.src[1] != SERVER_PORT and s.dst[1] != 69]
    assert errors_in(to_server) == [ErrorCode.DISK_FULL]


def test_max_size_also_holds_without_tsize() -> None:
    reactor, _, _ = fake_network({"f": payload(10_000)}, record=True)
    writer = MemoryWriter()
    done = download(reactor, SERVER_HOST, "f", writer, max_size=4000, tsize=False)
    error = failure_of(reactor, done)
    assert error.code == ErrorCode.DISK_FULL and writer.aborted


def test_local_disk_full_sends_error_3_and_ends_cleanly() -> None:
    reactor, server, _ = fake_network({"f": payload(10_000)}, record=True)
    writer = MemoryWriter(max_size=3000)  # raises DiskFull on the write that overflows
    error = failure_of(reactor, download(reactor, SERVER_HOST, "f", writer))
    assert (error.code, error.remote) == (ErrorCode.DISK_FULL, False)
    assert writer.aborted
    to_transfer = [s.data for s in reactor.sent if s.dst[1] not in (SERVER_PORT,)
                   and s.src[1] not in (SERVER_PORT,) and s.data[:2] == b"\x00\x05"]
    assert errors_in(to_transfer) == [ErrorCode.DISK_FULL]
    reactor.advance(60)
    assert [p.getHost().port for p in reactor.udp_ports] == [SERVER_PORT]
    assert not server.transfers


def test_asynchronous_commit_reports_at_once_not_after_the_dally() -> None:
    """A writer that commits later (a file fsynced in a thread) must not delay the result
    by the dally period: the Deferred fires when the commit does."""
    reactor, _, _ = fake_network({"f": payload(1000)})

    class SlowCommit(MemoryWriter):
        def commit(self) -> defer.Deferred[None]:
            later: defer.Deferred[None] = defer.Deferred()
            reactor.callLater(0.01, later.callback, None)
            return later.addCallback(lambda _: MemoryWriter.commit(self))

    started = reactor.seconds()
    result = get(reactor, "f", SlowCommit())
    assert reactor.seconds() - started < 0.1 and result.duration < 0.1


@pytest.mark.parametrize(
    ("host", "family", "expected"),
    [
        ("127.0.0.1", socket.AF_UNSPEC, "127.0.0.1"),
        ("127.0.0.1", socket.AF_INET6, "::ffff:127.0.0.1"),
        ("::ffff:127.0.0.1", socket.AF_UNSPEC, "::ffff:127.0.0.1"),  # not "::ffff:7f00:1"
        ("::FFFF:7f00:1", socket.AF_UNSPEC, "::ffff:127.0.0.1"),
        ("0:0:0:0:0:0:0:1", socket.AF_UNSPEC, "::1"),
    ],
)
def test_resolve_literals_as_the_socket_will_show_them(
    host: str, family: int, expected: str
) -> None:
    assert resolve(host, 69, family) == (expected, 69)


@pytest.mark.parametrize("host", ["::ffff:127.0.0.1", "::ffff:7f00:1"])
def test_ipv4_mapped_server_address_works(host: str) -> None:
    """An IPv6 socket sees the IPv4 server's replies as from ::ffff:127.0.0.1."""
    data = payload(3000)
    reactor, _, _ = fake_network({"f": data})
    writer = MemoryWriter()
    result = finish(reactor, download(reactor, host, "f", writer))
    assert writer.data == data and result.server[0] == "::ffff:127.0.0.1"


# -- against scripted servers ------------------------------------------------------------------


def test_oack_with_an_unrequested_option_gets_error_8() -> None:
    reactor, server = scripted(Sender(payload(2000), oack=[("blksize", "512"), ("foo", "1")]))
    writer = MemoryWriter()
    error = failure_of(reactor, download(reactor, SERVER_HOST, "f", writer, blksize=512))
    assert (error.code, error.remote) == (ErrorCode.OPTION_NEGOTIATION, False)
    assert errors_in(client_packets(reactor, server)) == [ErrorCode.OPTION_NEGOTIATION]
    assert writer.aborted and not writer.data and no_client_port_left(reactor)


def test_oack_with_a_known_option_that_was_not_requested_gets_error_8() -> None:
    reactor, server = scripted(Sender(payload(2000), oack=[("windowsize", "4")]))
    error = failure_of(reactor, download(reactor, SERVER_HOST, "f", MemoryWriter(), tsize=True))
    assert error.code == ErrorCode.OPTION_NEGOTIATION
    assert errors_in(client_packets(reactor, server)) == [ErrorCode.OPTION_NEGOTIATION]


@pytest.mark.parametrize(
    ("granted", "asked"),
    [(("blksize", "2048"), {"blksize": 1024}), (("windowsize", "32"), {"windowsize": 16}),
     (("timeout", "9"), {"timeout": 3})],
)
def test_oack_granting_more_than_asked_gets_error_8(
    granted: tuple[str, str], asked: dict[str, Any]
) -> None:
    reactor, server = scripted(Sender(payload(5000), oack=[granted]))
    error = failure_of(reactor, download(reactor, SERVER_HOST, "f", MemoryWriter(), **asked))
    assert error.code == ErrorCode.OPTION_NEGOTIATION and not error.remote
    assert errors_in(client_packets(reactor, server)) == [ErrorCode.OPTION_NEGOTIATION]


def test_oack_granting_less_is_used() -> None:
    data = payload(5000)
    reactor, _server = scripted(Sender(data, blksize=600, oack=[("blksize", "600")]))
    writer = MemoryWriter()
    result = get(reactor, "f", writer, blksize=1468)
    assert writer.data == data and result.options.blksize == 600
    assert result.options.granted == ("blksize",)


def test_oack_on_an_upload_with_an_unrequested_option_gets_error_8() -> None:
    reactor, server = scripted(Receiver(oack=[("blksize", "512"), ("windowsize", "8")]))
    done = upload(reactor, SERVER_HOST, "u", BytesReader(payload(3000)), blksize=512)
    error = failure_of(reactor, done)
    assert error.code == ErrorCode.OPTION_NEGOTIATION
    sent = client_packets(reactor, server)
    assert errors_in(sent) == [ErrorCode.OPTION_NEGOTIATION]
    assert not any(d[:2] == b"\x00\x03" for d in sent)  # no DATA went out


def test_error_8_makes_one_plain_retry() -> None:
    data = payload(1500)

    class RefusesOptions(Sender):
        def request(self, transfer: Transfer, request: RRQ | WRQ) -> None:
            if request.options:
                transfer.send(b"\x00\x05\x00\x08no options here\x00")
            else:
                super().request(transfer, request)

    reactor, server = scripted(RefusesOptions(data))
    writer = MemoryWriter()
    result = get(reactor, "f", writer, blksize=1024, windowsize=4)
    assert writer.data == data and result.options == Negotiated()
    assert [bool(r.options) for r in server.requests] == [True, False]


def test_error_8_twice_fails_after_exactly_two_requests() -> None:
    class AlwaysRefuses(Script):
        def request(self, transfer: Transfer, request: RRQ | WRQ) -> None:
            transfer.send(b"\x00\x05\x00\x08go away\x00")

    reactor, server = scripted(AlwaysRefuses())
    error = failure_of(reactor, download(reactor, SERVER_HOST, "f", MemoryWriter(), blksize=1024))
    assert (error.code, error.remote, error.message) == (8, True, "go away")
    reactor.advance(60)
    assert len(server.requests) == 2


def test_server_that_ignores_options_gets_the_defaults() -> None:
    data = payload(2000)
    reactor, server = scripted(Sender(data))  # answers DATA 1 to a request with options
    writer = MemoryWriter()
    result = get(reactor, "f", writer, blksize=1468, windowsize=8)
    assert writer.data == data and result.options == Negotiated()
    assert len(server.requests) == 1 and server.requests[0].options

    reactor, receiver_server = scripted(Receiver())  # ACK 0 to a WRQ with options
    script = receiver_server.script
    assert isinstance(script, Receiver)
    finish(reactor, upload(reactor, SERVER_HOST, "u", BytesReader(data), blksize=1468))
    assert bytes(script.data) == data
    blocks = [d for d in client_packets(reactor, receiver_server) if d[:2] == b"\x00\x03"]
    assert {len(b) - 4 for b in blocks} == {512, 2000 - 3 * 512}


def test_oack_after_data_is_ignored_and_the_defaults_hold() -> None:
    data = payload(700)

    class LateOack(Sender):
        def send_next(self, transfer: Transfer) -> None:
            super().send_next(transfer)
            if self.current == 1:
                transfer.send(OACK([("blksize", "1024")]).encode())

    reactor, server = scripted(LateOack(data))
    writer = MemoryWriter()
    result = get(reactor, "f", writer, blksize=1024)
    assert writer.data == data and result.options == Negotiated()
    acks = [d for d in client_packets(reactor, server) if d[:2] == b"\x00\x04"]
    assert acks == [encode_ack(1), encode_ack(2)]


def test_data_larger_than_blksize_is_an_illegal_operation() -> None:
    class Oversized(Sender):
        def block(self, number: int) -> bytes:
            return encode_data(number, b"x" * 600)

    reactor, server = scripted(Oversized(payload(2000)))
    writer = MemoryWriter()
    error = failure_of(reactor, download(reactor, SERVER_HOST, "f", writer, options=False))
    assert (error.code, error.remote) == (ErrorCode.ILLEGAL_OPERATION, False)
    assert errors_in(client_packets(reactor, server)) == [ErrorCode.ILLEGAL_OPERATION]
    assert writer.aborted and not writer.data


def test_data_larger_than_the_negotiated_blksize_is_refused_too() -> None:
    class Oversized(Sender):
        def block(self, number: int) -> bytes:
            return encode_data(number, b"x" * 1024)

    reactor, _server = scripted(Oversized(payload(3000), oack=[("blksize", "512")]))
    error = failure_of(reactor, download(reactor, SERVER_HOST, "f", MemoryWriter(), blksize=1024))
    assert error.code == ErrorCode.ILLEGAL_OPERATION


def test_data_from_another_port_gets_error_5_and_the_transfer_goes_on() -> None:
    data = payload(3000)

    class Intruder(Sender):
        def send_next(self, transfer: Transfer) -> None:
            super().send_next(transfer)
            if self.current == 2:
                rogue = Transfer(transfer.server, transfer.client)
                port = transfer.server.reactor.listenUDP(0, rogue, SERVER_HOST)
                self.rogue_port = port.getHost().port
                rogue.send(encode_data(3, b"evil" * 100))

    script = Intruder(data)
    reactor, _server = scripted(script)
    writer = MemoryWriter()
    result = get(reactor, "f", writer, options=False)
    assert writer.data == data and result.bytes == len(data)
    to_rogue = [s.data for s in reactor.sent if s.dst[1] == script.rogue_port]
    assert errors_in(to_rogue) == [ErrorCode.UNKNOWN_TID]


def test_first_reply_from_another_address_gets_error_5() -> None:
    data = payload(1000)

    class Spoofer(Sender):
        def request(self, transfer: Transfer, request: RRQ | WRQ) -> None:
            reactor = transfer.server.reactor
            stranger = Transfer(transfer.server, transfer.client)
            port = reactor.listenUDP(0, stranger, "127.0.0.9")
            self.stranger_port = port.getHost().port
            stranger.send(encode_data(1, b"forged"))
            reactor.callLater(0.01, super().request, transfer, request)

    script = Spoofer(data)
    reactor, server = scripted(script)
    writer = MemoryWriter()
    result = get(reactor, "f", writer, options=False)
    assert writer.data == data and result.server[1] == server.transfers[0].number
    to_stranger = [s.data for s in reactor.sent if s.dst == ("127.0.0.9", script.stranger_port)]
    assert errors_in(to_stranger) == [ErrorCode.UNKNOWN_TID]


def test_every_duplicate_data_is_acknowledged_again() -> None:
    data = payload(512 * 5 + 100)
    reactor, server = scripted(Sender(data, copies=3))
    writer = MemoryWriter()
    get(reactor, "f", writer, options=False)
    assert writer.data == data
    acks = [d for d in client_packets(reactor, server) if d[:2] == b"\x00\x04"]
    assert acks == [encode_ack(n) for n in range(1, 7) for _ in range(3)]


def test_follows_a_server_that_wraps_to_1() -> None:
    blocks = 65535 + 30
    data = payload(8 * blocks + 3)
    script = Sender(data, blksize=8, oack=[("blksize", "8")], wire=lambda n: (n - 1) % 65535 + 1)
    reactor, _ = scripted(script)
    reactor.record = False  # 65,000 round trips: keep memory flat
    writer = MemoryWriter()
    result = finish_long(reactor, download(reactor, SERVER_HOST, "f", writer, blksize=8))
    assert writer.data == data and result.bytes == len(data)


def test_silent_server_backs_off_exponentially_and_gives_up_at_the_deadline() -> None:
    reactor, _server = scripted(Script())
    done = download(reactor, SERVER_HOST, "f", MemoryWriter(), timeout=8, give_up_after=40)
    started = reactor.seconds()
    error = failure_of(reactor, done)
    assert error.timed_out and not error.remote and error.code == 0
    times = [s.time - started for s in reactor.sent if s.dst[1] == SERVER_PORT]
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    assert gaps[:4] == [1.0, 2.0, 4.0, 8.0] and set(gaps[4:]) == {8.0}
    assert 40 <= reactor.seconds() - started <= 48
    assert no_client_port_left(reactor)


def test_server_silent_after_the_first_block_times_out() -> None:
    class Stops(Sender):
        def send_next(self, transfer: Transfer) -> None:
            if self.current == 0:
                super().send_next(transfer)

    reactor, _ = scripted(Stops(payload(3000)))
    writer = MemoryWriter()
    done = download(reactor, SERVER_HOST, "f", writer, options=False, give_up_after=10)
    started = reactor.seconds()
    error = failure_of(reactor, done)
    assert error.timed_out and writer.aborted
    assert 10 <= reactor.seconds() - started <= 13


def test_error_mid_transfer_ends_it_without_an_answer() -> None:
    class Quits(Sender):
        def send_next(self, transfer: Transfer) -> None:
            if self.current == 2:
                transfer.send(b"\x00\x05\x00\x02go away\x00")
            else:
                super().send_next(transfer)

    reactor, server = scripted(Quits(payload(3000)))
    writer = MemoryWriter()
    error = failure_of(reactor, download(reactor, SERVER_HOST, "f", writer, options=False))
    assert (error.code, error.message, error.remote) == (2, "go away", True)
    assert str(error) == "go away (server error 2)"
    assert writer.aborted and errors_in(client_packets(reactor, server)) == []
    assert no_client_port_left(reactor)


def test_error_mid_upload_is_reported() -> None:
    class Full(Receiver):
        def packet(self, transfer: Transfer, datagram: bytes) -> None:
            if self.expected == 3:
                transfer.send(b"\x00\x05\x00\x03Disk full\x00")
            else:
                super().packet(transfer, datagram)

    reactor, _ = scripted(Full())
    closed: list[bool] = []

    class Reader(BytesReader):
        def close(self) -> None:
            closed.append(True)

    error = failure_of(reactor, upload(reactor, SERVER_HOST, "u", Reader(payload(5000))))
    assert (error.code, error.remote) == (ErrorCode.DISK_FULL, True) and closed


# -- local files -------------------------------------------------------------------------------


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".netsvc.part"))


def test_local_writer_puts_the_file_in_place_only_on_commit(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    writer = open_local_writer(target)
    writer.write(b"hello ")
    writer.write(b"world")
    assert not target.exists() and len(leftovers(tmp_path)) == 1
    committed: list[object] = []
    writer.commit().addBoth(committed.append)
    assert committed == [None]
    assert target.read_bytes() == b"hello world" and leftovers(tmp_path) == []
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_local_writer_abort_leaves_the_old_file_untouched(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    target.chmod(0o600)
    writer = open_local_writer(target)
    writer.write(b"new data")
    writer.abort()
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []
    writer = open_local_writer(target)
    writer.write(b"new")
    writer.commit()
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o600


def test_local_writer_follows_a_symbolic_link(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_bytes(b"old")
    link = tmp_path / "link"
    link.symlink_to(real)
    writer = open_local_writer(link)
    writer.write(b"new")
    writer.commit()
    assert link.is_symlink() and real.read_bytes() == b"new"


@pytest.mark.parametrize(
    ("setup", "error"),
    [("directory", AccessViolation), ("missing-dir", FileNotFound), ("fifo", AccessViolation),
     ("exists", FileExists)],
)
def test_local_writer_refusals(tmp_path: Path, setup: str, error: type[BackendError]) -> None:
    target = tmp_path / "t"
    if setup == "directory":
        target.mkdir()
    elif setup == "missing-dir":
        target = tmp_path / "nope" / "t"
    elif setup == "fifo":
        os.mkfifo(target)
    else:
        target.write_bytes(b"keep")
    with pytest.raises(error):
        open_local_writer(target, overwrite=False)
    assert leftovers(tmp_path) == []


def test_local_writer_without_overwrite_loses_a_race_cleanly(tmp_path: Path) -> None:
    target = tmp_path / "t"
    writer = open_local_writer(target, overwrite=False)
    writer.write(b"mine")
    target.write_bytes(b"theirs")
    failures: list[Any] = []
    writer.commit().addErrback(failures.append)
    assert failures and isinstance(failures[0].value, FileExists)
    assert target.read_bytes() == b"theirs" and leftovers(tmp_path) == []


def test_download_into_a_file_disk_full_sends_error_3_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"previous version")
    reactor, _, _ = fake_network({"f": payload(20_000)}, record=True)
    real_write = os.write
    written = [0]

    def filling_write(fd: int, data: Any) -> int:
        if written[0] > 5000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written[0] += len(data)
        return real_write(fd, data)

    writer = open_local_writer(target)
    monkeypatch.setattr(os, "write", filling_write)
    error = failure_of(reactor, download(reactor, SERVER_HOST, "f", writer))
    monkeypatch.undo()
    assert (error.code, error.remote) == (ErrorCode.DISK_FULL, False)
    assert target.read_bytes() == b"previous version" and leftovers(tmp_path) == []
    client_errors = [s.data for s in reactor.sent if s.src[1] != SERVER_PORT]
    assert ErrorCode.DISK_FULL in errors_in(client_errors)


def test_download_into_a_file_appears_complete(tmp_path: Path) -> None:
    data = payload(100_000)
    reactor, _, _ = fake_network({"f": data})
    target = tmp_path / "f"
    result = get(reactor, "f", open_local_writer(target), blksize=1468)
    assert target.read_bytes() == data and result.bytes == len(data)
    assert leftovers(tmp_path) == []


def test_failed_download_into_a_file_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    reactor, _, _ = fake_network({})
    error = failure_of(reactor, download(reactor, SERVER_HOST, "gone", open_local_writer(target)))
    assert error.code == ErrorCode.FILE_NOT_FOUND
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_stdout_writer_streams_and_reports_a_broken_pipe() -> None:
    stream = io.BytesIO()
    writer = StdoutWriter(stream)
    writer.write(b"abc")
    writer.write(b"def")
    done: list[object] = []
    writer.commit().addBoth(done.append)
    assert stream.getvalue() == b"abcdef" and done == [None] and writer.written == 6

    class BrokenPipe(io.BytesIO):
        def write(self, data: Any) -> int:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    writer = StdoutWriter(BrokenPipe())
    with pytest.raises(BackendError, match="Broken pipe"):
        writer.write(b"x")
    writer.abort()


def test_local_reader_gives_size_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "src"
    data = payload(3000)
    path.write_bytes(data)
    reader = open_local_reader(path)
    assert reader.size == 3000
    chunks = [reader.read(1024) for _ in range(4)]
    reader.close()
    assert b"".join(chunks) == data and [len(c) for c in chunks] == [1024, 1024, 952, 0]


@pytest.mark.parametrize(
    ("setup", "error"),
    [("missing", FileNotFound), ("directory", AccessViolation), ("fifo", AccessViolation)],
)
def test_local_reader_refusals(tmp_path: Path, setup: str, error: type[BackendError]) -> None:
    path = tmp_path / "src"
    if setup == "directory":
        path.mkdir()
    elif setup == "fifo":
        os.mkfifo(path)  # must be refused without blocking on the open
    with pytest.raises(error):
        open_local_reader(path)


def test_free_space_is_that_of_the_target_directory(tmp_path: Path) -> None:
    space = free_space(tmp_path / "not-yet")
    info = os.statvfs(tmp_path)
    assert space is not None and abs(space - info.f_bavail * info.f_frsize) < 64 << 20


def test_upload_from_a_local_file(tmp_path: Path) -> None:
    data = payload(10_000)
    path = tmp_path / "src"
    path.write_bytes(data)
    reactor, _, backend = fake_network()
    result = finish(reactor, upload(reactor, SERVER_HOST, "dst", open_local_reader(path)))
    assert backend.files["dst"] == data and result.options.tsize == 10_000



def test_buffered_writer_writes_in_chunks_and_everything_on_commit() -> None:
    from netsvc.tftp.backend import MemoryWriter
    from netsvc.tftp.localfile import BufferedWriter

    chunks: list[int] = []
    inner = MemoryWriter()
    real_write = inner.write

    def counting(data: bytes) -> None:
        chunks.append(len(data))
        real_write(data)

    inner.write = counting  # type: ignore[method-assign]
    writer = BufferedWriter(inner, size=1000)
    for _ in range(25):
        assert writer.write(b"x" * 100) is None
    assert chunks == [1000, 1000]
    done: list[object] = []
    writer.commit().addBoth(done.append)
    assert done == [None] and chunks == [1000, 1000, 500]
    assert inner.committed and inner.data == b"x" * 2500


def test_buffered_writer_abort_discards_the_buffer() -> None:
    from netsvc.tftp.backend import MemoryWriter
    from netsvc.tftp.localfile import BufferedWriter

    inner = MemoryWriter()
    writer = BufferedWriter(inner, size=1000)
    writer.write(b"y" * 10)
    writer.abort()
    assert inner.aborted and inner.data == b""

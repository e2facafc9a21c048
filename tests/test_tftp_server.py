"""The TFTP server on an in-memory network (netsvc.testing), driven by the netsvc client."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from netsvc.testing import FakeUDPReactor, LinkConditions
from netsvc.tftp.backend import BytesReader, IBackend, MemoryWriter, RequestContext
from netsvc.tftp.client import TFTPError, download, upload
from netsvc.tftp.engine import encode_error
from netsvc.tftp.packets import ErrorCode, Mode, encode_ack
from netsvc.tftp.server import BACKEND_TIMEOUT_MESSAGE, TFTPServerLimits
from tests.tftp_support import SERVER_HOST, SERVER_PORT, MemoryBackend, fake_network, finish

LOSSY = LinkConditions(loss=0.15, duplicate=0.05, reorder=0.1, delay=0.001, jitter=0.001)


def get(reactor: FakeUDPReactor, name: str, **kwargs: Any) -> tuple[Any, bytes]:
    writer = MemoryWriter()
    done = download(reactor, SERVER_HOST, name, writer, port=SERVER_PORT, **kwargs)
    result = finish(reactor, done)
    return result, writer.data


def put(reactor: FakeUDPReactor, name: str, data: bytes, **kwargs: Any) -> Any:
    return finish(
        reactor, upload(reactor, SERVER_HOST, name, BytesReader(data), port=SERVER_PORT, **kwargs)
    )


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 512 * 8, 100_000])
@pytest.mark.parametrize("windowsize", [None, 4, 16, 64])
def test_download_over_a_lossy_link_is_byte_identical(size: int, windowsize: int | None) -> None:
    data = payload(size)
    reactor, _, _ = fake_network({"f": data}, conditions=LOSSY, seed=size)
    result, received = get(reactor, "f", windowsize=windowsize, blksize=512)
    assert received == data and result.bytes == size
    assert result.options.windowsize == (windowsize or 1)


@pytest.mark.parametrize("size", [0, 1, 511, 512, 100_000])
@pytest.mark.parametrize("windowsize", [None, 16])
def test_upload_over_a_lossy_link_is_byte_identical(size: int, windowsize: int | None) -> None:
    data = payload(size, 1)
    reactor, _, backend = fake_network(conditions=LOSSY, seed=size + 7)
    result = put(reactor, "up", data, windowsize=windowsize)
    assert backend.files["up"] == data and result.bytes == size


@pytest.mark.parametrize("blksize", [8, 1468, 8192, 65464])
def test_every_blksize_including_the_largest(blksize: int) -> None:
    data = payload(3 * blksize + 5)
    reactor, _, _ = fake_network({"f": data})
    result, received = get(reactor, "f", blksize=blksize)
    assert received == data and result.options.blksize == blksize


def test_rollover_past_block_65535() -> None:
    data = payload(600 * 1024)
    reactor, _, _ = fake_network({"f": data})
    _result, received = get(reactor, "f", blksize=8, windowsize=16)
    assert received == data


def test_tsize_reports_real_size_in_octet_and_is_left_out_in_netascii() -> None:
    reactor, _, _ = fake_network({"f": b"a\nb\n" * 100})
    result, _ = get(reactor, "f")
    assert result.options.tsize == 400
    result, received = get(reactor, "f", mode=Mode.NETASCII)
    assert result.options.tsize is None and received == b"a\nb\n" * 100


def test_netascii_upload_stores_local_newlines() -> None:
    reactor, _, backend = fake_network()
    put(reactor, "t.txt", b"line1\nline2\r\n", mode=Mode.NETASCII)
    assert backend.files["t.txt"] == b"line1\nline2\r\n"


def test_server_clamps_blksize_and_windowsize_to_its_policy() -> None:
    from netsvc.tftp.options import ServerOptionPolicy

    reactor, _, _ = fake_network(
        {"f": payload(10_000)}, policy=ServerOptionPolicy(max_blksize=1024, max_windowsize=4)
    )
    result, received = get(reactor, "f", blksize=8192, windowsize=64)
    assert (result.options.blksize, result.options.windowsize) == (1024, 4)
    assert len(received) == 10_000


@pytest.mark.parametrize(
    ("name", "code"),
    [("missing", ErrorCode.FILE_NOT_FOUND), ("secret", ErrorCode.ACCESS_VIOLATION)],
)
def test_backend_errors_reach_the_client(name: str, code: int) -> None:
    reactor, _, _ = fake_network({})
    with pytest.raises(TFTPError) as raised:
        get(reactor, name)
    assert raised.value.code == code and raised.value.remote


def test_upload_to_read_only_backend_is_access_violation() -> None:
    reactor, _, _ = fake_network(backend=MemoryBackend(writable=False))
    with pytest.raises(TFTPError) as raised:
        put(reactor, "x", b"data")
    assert raised.value.code == ErrorCode.ACCESS_VIOLATION


def test_disk_full_mid_upload_is_error_3_and_nothing_is_committed() -> None:
    class SmallDisk(MemoryBackend):
        def open_write(self, context: Any, size: int | None) -> Any:
            writer = MemoryWriter(lambda data: self.files.update(big=data), max_size=2000)
            self.writers.append(writer)
            return defer.succeed(writer)

    reactor, _, backend = fake_network(backend=SmallDisk())
    with pytest.raises(TFTPError) as raised:
        put(reactor, "big", payload(5000), tsize=False)
    assert raised.value.code == ErrorCode.DISK_FULL and raised.value.remote
    assert "big" not in backend.files and backend.writers[0].aborted


def test_final_ack_waits_for_the_commit() -> None:
    commits: list[defer.Deferred[None]] = []

    class SlowCommit(MemoryBackend):
        def open_write(self, context: Any, size: int | None) -> Any:
            def store(data: bytes) -> defer.Deferred[None]:
                d: defer.Deferred[None] = defer.Deferred()
                commits.append(d)
                return d

            return defer.succeed(MemoryWriter(store))

    reactor, _, _ = fake_network(backend=SlowCommit(), record=True)
    done = upload(reactor, SERVER_HOST, "f", BytesReader(b"x" * 700), port=SERVER_PORT)
    reactor.run_until(lambda: bool(commits), timeout=10)
    reactor.advance(0.5)
    final_ack = encode_ack(2)
    assert not any(s.data == final_ack for s in reactor.sent) and not done.called
    commits[0].callback(None)
    finish(reactor, done)
    assert any(s.data == final_ack for s in reactor.sent)


def test_failed_commit_is_reported_instead_of_acknowledged() -> None:
    from netsvc.tftp.backend import DiskFull

    class FailingCommit(MemoryBackend):
        def open_write(self, context: Any, size: int | None) -> Any:
            return defer.succeed(MemoryWriter(lambda data: defer.fail(DiskFull("fsync failed"))))

    reactor, _, _ = fake_network(backend=FailingCommit())
    with pytest.raises(TFTPError) as raised:
        put(reactor, "f", b"x" * 700)
    assert raised.value.code == ErrorCode.DISK_FULL


def test_async_reader_is_fed_as_it_delivers() -> None:
    class SlowReader:
        size = None

        def __init__(self, data: bytes, reactor: FakeUDPReactor) -> None:
            self.inner = BytesReader(data)
            self.reactor = reactor

        def read(self, n: int) -> defer.Deferred[bytes]:
            d: defer.Deferred[bytes] = defer.Deferred()
            self.reactor.callLater(0.01, d.callback, self.inner.read(n))
            return d

        def close(self) -> None:
            pass

    reactor = FakeUDPReactor()
    data = payload(20_000)
    backend = MemoryBackend({"f": data}, reader=lambda d: SlowReader(d, reactor))
    from netsvc.tftp.server import TFTPServer

    reactor.listenUDP(SERVER_PORT, TFTPServer(reactor, backend, interface=SERVER_HOST), SERVER_HOST)
    _result, received = get(reactor, "f", windowsize=4)
    assert received == data


def test_retransmitted_request_starts_one_transfer() -> None:
    reactor, server, backend = fake_network({"f": payload(2000)})
    client = reactor.listenUDP(0, _Silent(), "")
    request = b"\x00\x01f\x00octet\x00"
    for _ in range(3):
        client.write(request, (SERVER_HOST, SERVER_PORT))
    reactor.advance(0)
    assert len(server.transfers) == 1 and len(backend.contexts) == 1


def test_unproven_peer_gets_a_bounded_number_of_packets() -> None:
    limits = TFTPServerLimits(first_contact_retries=3)
    reactor, server, _ = fake_network({"f": payload(2000)}, limits=limits, record=True)
    client = reactor.listenUDP(0, _Silent(), "")  # never acknowledges
    client.write(b"\x00\x01f\x00octet\x00blksize\x001024\x00", (SERVER_HOST, SERVER_PORT))
    reactor.run_until(lambda: False, timeout=120)
    to_client = [s for s in reactor.sent if s.dst[1] == client.getHost().port]
    assert 1 <= len(to_client) <= 3 + 1 + 1  # first send, retries, a final ERROR
    assert to_client[0].data.startswith(b"\x00\x06")  # the small OACK went first
    assert not server.transfers


def test_wrong_tid_gets_error_5_and_the_transfer_goes_on() -> None:
    data = payload(5000)
    reactor, server, _ = fake_network(
        {"f": data}, conditions=LinkConditions(delay=0.001), record=True
    )
    writer = MemoryWriter()
    done = download(reactor, SERVER_HOST, "f", writer, port=SERVER_PORT)
    reactor.run_until(lambda: bool(server.transfers), timeout=5)
    transfer = next(iter(server.transfers.values()))
    assert transfer.port is not None
    intruder = reactor.listenUDP(0, _Silent(), "")
    intruder.write(encode_ack(1), (SERVER_HOST, transfer.port.getHost().port))
    finish(reactor, done)
    assert writer.data == data
    errors = [s for s in reactor.sent if s.dst[1] == intruder.getHost().port]
    assert [e.data[:4] for e in errors] == [struct.pack("!HH", 5, 5)]


def test_uefi_size_probe_is_a_normal_end() -> None:
    reactor, server, _ = fake_network({"f": payload(5000)})
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        client = reactor.listenUDP(0, _Reply(b"\x00\x05\x00\x08probe\x00"), "")
        client.write(b"\x00\x01f\x00octet\x00tsize\x000\x00", (SERVER_HOST, SERVER_PORT))
        reactor.run_until(lambda: not server.transfers and bool(events), timeout=10)
    finally:
        globalLogPublisher.removeObserver(events.append)
    outcomes = [e["outcome"] for e in events if "outcome" in e]
    assert outcomes == ["size-probe"]


def test_one_log_event_per_transfer_with_the_facts() -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        reactor, _, _ = fake_network({"f": payload(3000)}, conditions=LOSSY)
        get(reactor, "f", blksize=1024)
        reactor.advance(10)
    finally:
        globalLogPublisher.removeObserver(events.append)
    transfer_events = [e for e in events if "outcome" in e]
    assert len(transfer_events) == 1
    event = transfer_events[0]
    assert event["outcome"] == "complete" and event["bytes"] == 3000
    assert event["direction"] == "read" and event["filename"] == "f"
    assert event["options"]["blksize"] == "1024"
    assert {"peer", "duration", "retransmits", "mode"} <= set(event)


# -- bad input at the listening port -------------------------------------------------------

JUNK = [
    (b"", None),
    (b"\x00", None),
    (b"\x00\x01", None),
    (b"\x00\x01f", None),  # shorter than 4 bytes: silence
    (b"\x00\x03\x00\x01data", None),  # DATA to the listener
    (b"\x00\x04\x00\x01", None),  # ACK
    (b"\x00\x05\x00\x01oops\x00", None),  # ERROR
    (b"\x00\x06blksize\x00512\x00", None),  # OACK
    (b"\x00\x09junk\x00", None),  # unknown opcode
    (b"\x00\x01file\x00octet", ErrorCode.ILLEGAL_OPERATION),  # mode not NUL-terminated
    (b"\x00\x01file", ErrorCode.ILLEGAL_OPERATION),  # no NUL at all
    (b"\x00\x01\x00octet\x00", ErrorCode.ILLEGAL_OPERATION),  # empty filename
    (b"\x00\x01file\x00bogus\x00", ErrorCode.ILLEGAL_OPERATION),  # bad mode
    (b"\x00\x01file\x00mail\x00", ErrorCode.ILLEGAL_OPERATION),  # mail refused
    (b"\x00\x01file\x00octet\x00junk", ErrorCode.ILLEGAL_OPERATION),  # junk after last NUL
    (b"\x00\x01file\x00octet\x00blksize\x00", ErrorCode.ILLEGAL_OPERATION),  # option, no value
    (b"\x00\x01f\x00octet\x00blksize\x00abc\x00", ErrorCode.OPTION_NEGOTIATION),
    (b"\x00\x01f\x00octet\x00blksize\x0099999999\x00", ErrorCode.OPTION_NEGOTIATION),
    (b"\x00\x01f\x00octet\x00blksize\x007\x00", ErrorCode.OPTION_NEGOTIATION),
    (b"\x00\x01f\x00octet\x00windowsize\x000\x00", ErrorCode.OPTION_NEGOTIATION),
    (b"\x00\x01f\x00octet\x00timeout\x00256\x00", ErrorCode.OPTION_NEGOTIATION),
    (b"\x00\x01" + b"a" * 600 + b"\x00octet\x00", ErrorCode.NOT_DEFINED),  # name too long
    (b"\x00\x01" + b"a" * 65000, ErrorCode.NOT_DEFINED),  # 65,000-byte datagram
    (b"\x00\x01../../etc/passwd\x00octet\x00", ErrorCode.FILE_NOT_FOUND),  # memory backend
]


@pytest.mark.parametrize(("datagram", "code"), JUNK)
def test_each_malformed_request_gets_its_fixed_answer(datagram: bytes, code: int | None) -> None:
    reactor, _, _ = fake_network({"f": b"x"}, record=True)
    client = reactor.listenUDP(0, _Silent(), "")
    client.write(datagram, (SERVER_HOST, SERVER_PORT))
    reactor.run_until(lambda: False, timeout=1)
    replies = [s.data for s in reactor.sent if s.dst[1] == client.getHost().port]
    if code is None:
        assert replies == []
    else:
        assert len(replies) == 1 and replies[0][:4] == struct.pack("!HH", 5, code)


def test_duplicate_options_last_one_wins() -> None:
    reactor, _, _ = fake_network({"f": payload(3000)}, record=True)
    client = reactor.listenUDP(0, _Silent(), "")
    client.write(
        b"\x00\x01f\x00octet\x00blksize\x001024\x00BLKSIZE\x00600\x00",
        (SERVER_HOST, SERVER_PORT),
    )
    reactor.advance(0)
    replies = [s.data for s in reactor.sent if s.dst[1] == client.getHost().port]
    assert replies[0] == b"\x00\x06blksize\x00600\x00"


def test_request_rate_limit_per_source() -> None:
    limits = TFTPServerLimits(request_rate=10, request_burst=20)
    reactor, server, _ = fake_network({}, limits=limits, record=True)
    client = reactor.listenUDP(0, _Silent(), "")
    for index in range(500):
        client.write(b"\x00\x01missing%d\x00octet\x00" % index, (SERVER_HOST, SERVER_PORT))
    reactor.advance(0)
    assert server.counters["requests"] == 20


def test_a_source_over_the_request_rate_is_reported_once_and_when_it_is_back() -> None:
    limits = TFTPServerLimits(request_rate=10, request_burst=20)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        reactor, server, _ = fake_network({}, limits=limits)
        client = reactor.listenUDP(0, _Silent(), "")
        for index in range(500):
            client.write(b"\x00\x01missing%d\x00octet\x00" % index, (SERVER_HOST, SERVER_PORT))
        reactor.advance(0)
        # Never a reason to write: sources that cannot be answered are not "held back".
        server.datagramReceived(b"\x00\x01f\x00octet\x00", ("255.255.255.255", 69))
        server.datagramReceived(b"\x00\x01f\x00octet\x00", ("0.0.0.0", 69))
        reported = [e for e in events if "source" in e]
        reactor.advance(10)  # the bucket refills
        client.write(b"\x00\x01missing\x00octet\x00", (SERVER_HOST, SERVER_PORT))
        reactor.advance(0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [(e["source"], e["log_level"].name) for e in reported] == [(SERVER_HOST, "warn")]
    assert server.counters["rate_limited"] == 480
    back = [e for e in events if "source" in e][1:]
    assert [(e["source"], e["count"], e["log_level"].name) for e in back] == [
        (SERVER_HOST, 480, "info")
    ]


def test_session_caps_answer_busy() -> None:
    limits = TFTPServerLimits(max_sessions_per_client=2)
    reactor, server, _ = fake_network({"f": payload(100_000)}, limits=limits, record=True)
    ports = [reactor.listenUDP(0, _Silent(), "") for _ in range(3)]
    for port in ports:
        port.write(b"\x00\x01f\x00octet\x00", (SERVER_HOST, SERVER_PORT))
    reactor.advance(0)
    assert len(server.transfers) == 2
    busy = [s.data for s in reactor.sent if s.dst[1] == ports[2].getHost().port]
    assert busy and busy[0][:4] == struct.pack("!HH", 5, 0) and b"busy" in busy[0]


def test_shutdown_aborts_transfers_and_discards_uploads() -> None:
    reactor, server, backend = fake_network(conditions=LinkConditions(delay=0.001))
    upload(reactor, SERVER_HOST, "f", BytesReader(payload(50_000)), port=SERVER_PORT).addErrback(
        lambda f: None
    )
    reactor.run_until(lambda: bool(backend.writers), timeout=5)
    reactor.advance(0.01)
    server.shutdown()
    assert not server.transfers and backend.writers[0].aborted and "f" not in backend.files


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=700))
def test_random_datagrams_never_crash_nor_get_more_than_one_answer(datagram: bytes) -> None:
    reactor, _, _ = fake_network({"f": b"x" * 10}, record=True)
    client = reactor.listenUDP(0, _Silent(), "")
    client.write(datagram, (SERVER_HOST, SERVER_PORT))
    reactor.advance(0)  # the server's immediate answer, if any
    replies = [s for s in reactor.sent if s.dst[1] == client.getHost().port]
    assert len(replies) <= 1
    assert reactor.protocol_errors == []


class _Silent:
    """A datagram protocol that ignores everything."""

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        pass

    def doStop(self) -> None:
        pass

    def doStart(self) -> None:
        pass

    def connectionRefused(self) -> None:
        pass


class _Reply(_Silent):
    """Answers the first datagram from the server with a fixed datagram."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.sent = False

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if not self.sent:
            self.sent = True
            self.transport.write(self.reply, addr)


@implementer(IBackend)
class _HungBackend:
    """Never answers an open (a dynamic backend stuck on something); notes cancels."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []
        self.cancelled = 0

    def _hang(self) -> Deferred[Any]:
        def cancelled(_: Deferred[Any]) -> None:
            self.cancelled += 1

        waiting: Deferred[Any] = Deferred(cancelled)
        self.pending.append(waiting)
        return waiting

    def open_read(self, context: RequestContext) -> Deferred[Any]:
        return self._hang()

    def open_write(self, context: RequestContext, size: int | None) -> Deferred[Any]:
        return self._hang()


@pytest.mark.parametrize("opcode", [1, 2])
def test_a_backend_that_never_answers_ends_after_the_idle_timeout(opcode: int) -> None:
    backend = _HungBackend()
    limits = TFTPServerLimits(idle_timeout=5.0)
    reactor, server, _ = fake_network(backend=backend, limits=limits, record=True)
    client = reactor.listenUDP(0, _Silent(), "")
    client.write(bytes([0, opcode]) + b"f\x00octet\x00", (SERVER_HOST, SERVER_PORT))
    reactor.advance(0)  # the request arrives
    reactor.advance(4.9)
    assert server.active == 1 and backend.cancelled == 0
    reactor.advance(0.2)
    replies = [s.data for s in reactor.sent if s.dst[1] == client.getHost().port]
    assert replies == [encode_error(ErrorCode.NOT_DEFINED, BACKEND_TIMEOUT_MESSAGE)]
    assert server.active == 0 and not server.transfers and backend.cancelled == 1
    reactor.advance(60)  # and nothing more, ever
    assert len([s for s in reactor.sent if s.dst[1] == client.getHost().port]) == 1


def test_dallying_uploads_are_bounded_by_the_session_cap() -> None:
    # A complete upload stays 5 s to repeat its last ACK without holding a session slot;
    # a stream of small uploads must not pile those up without bound.
    limits = TFTPServerLimits(max_sessions=2, dally=5.0)
    reactor, server, backend = fake_network(limits=limits)
    for index in range(5):
        put(reactor, f"f{index}", payload(100, index))
        assert len(server.dallying) == min(index + 1, 2)
        assert len(server.transfers) == len(server.dallying) and server.active == 0
    assert [key for key in server.dallying] == [t.key for t in server.transfers.values()]
    assert all(backend.files[f"f{i}"] == payload(100, i) for i in range(5))
    reactor.advance(6)
    assert not server.dallying and not server.transfers

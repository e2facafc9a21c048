"""The blocking TFTP client (netsvc.tftp.blocking): on the fake network against the netsvc
server (loss, windows, netascii, local errors), and its UDP channel on real sockets.

The command line runs on it too: tests/test_tftp_cli.py covers misbehaving servers,
exit statuses and messages through ``transfer()``.
"""

from __future__ import annotations

import random
import socket
import sys
import time

import pytest

from netsvc.spin import Spinner
from netsvc.testing import BlockingChannel, FakeUDPReactor, LinkConditions
from netsvc.tftp.backend import BytesReader
from netsvc.tftp.blocking import READ_AHEAD, UDPChannel, run_transfer
from netsvc.tftp.clientcore import (
    TFTPError,
    TransferResult,
    download_request,
    request_timer,
    upload_request,
)
from netsvc.tftp.files import DiskFull
from netsvc.tftp.packets import Mode
from tests.tftp_support import SERVER_HOST, SERVER_PORT, fake_network

SERVER = (SERVER_HOST, SERVER_PORT)


class MemorySink:
    """A synchronous writer in memory; ``fail_after`` bytes, then the disk is full."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.parts: list[bytes] = []
        self.committed = False
        self.aborted = False
        self.fail_after = fail_after

    def write(self, data: bytes) -> None:
        if self.fail_after is not None and sum(map(len, self.parts)) + len(data) > self.fail_after:
            raise DiskFull("No space left on device")
        self.parts.append(data)

    def commit_now(self) -> None:
        self.committed = True

    def abort(self) -> None:
        self.aborted = True

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def get(
    reactor: FakeUDPReactor, name: str, sink: MemorySink, *, mode: Mode = Mode.OCTET,
    blksize: int | None = 512, windowsize: int | None = None, max_size: int | None = None,
) -> TransferResult:
    request = download_request(
        name, mode, blksize=blksize, windowsize=windowsize, timeout=None, tsize=True,
        options=True,
    )
    channel = BlockingChannel(reactor)
    try:
        return run_transfer(
            channel, SERVER, request, sink, timer=request_timer(None), give_up_after=30.0,
            max_size=max_size, clock=reactor.seconds,
        )
    finally:
        channel.close()


@pytest.mark.parametrize("windowsize", [None, 4, 16])
@pytest.mark.parametrize("size", [0, 1, 511, 512, 5 * 512, 40_000])
def test_download_through_loss_duplication_and_reordering(
    size: int, windowsize: int | None
) -> None:
    data = payload(size)
    conditions = LinkConditions(loss=0.15, duplicate=0.05, reorder=0.1, delay=0.002)
    reactor, _, _ = fake_network({"f": data}, conditions=conditions, seed=size)
    sink = MemorySink()
    result = get(reactor, "f", sink, windowsize=windowsize)
    assert sink.data == data and sink.committed and not sink.aborted
    assert result.bytes == size and result.options.tsize == (size or None)  # no "tsize 0"


def test_upload_windowed_with_loss_arrives_intact() -> None:
    data = payload(30_000, seed=3)
    conditions = LinkConditions(loss=0.1, delay=0.002)
    reactor, _, backend = fake_network(conditions=conditions, seed=3)
    request = upload_request(
        "up", Mode.OCTET, len(data), blksize=1024, windowsize=8, timeout=None, tsize=True,
        options=True,
    )
    result = run_transfer(
        BlockingChannel(reactor), SERVER, request, BytesReader(data), timer=request_timer(None),
        give_up_after=30.0, clock=reactor.seconds,
    )
    assert backend.files["up"] == data and result.options.windowsize == 8


def test_an_upload_reads_its_file_ahead_not_one_block_at_a_time() -> None:
    class Counting(BytesReader):
        def __init__(self, data: bytes) -> None:
            super().__init__(data)
            self.sizes: list[int] = []

        def read(self, n: int) -> bytes:
            self.sizes.append(n)
            return super().read(n)

    data = payload(100 * 512 + 7, seed=4)
    reactor, _, backend = fake_network()
    request = upload_request(
        "ahead", Mode.OCTET, len(data), blksize=None, windowsize=None, timeout=None,
        tsize=True, options=True,
    )
    reader = Counting(data)
    result = run_transfer(
        BlockingChannel(reactor), SERVER, request, reader, timer=request_timer(None),
        give_up_after=30.0, clock=reactor.seconds,
    )
    assert backend.files["ahead"] == data and result.bytes == len(data)
    assert reader.sizes == [READ_AHEAD, READ_AHEAD]  # 101 blocks, two reads (the second short)


def test_netascii_download_decodes_and_upload_encodes() -> None:
    text = b"line one\nline two\r\nbare\rend\n" * 100
    reactor, _, backend = fake_network({"t": text})  # the server encodes, we decode
    sink = MemorySink()
    get(reactor, "t", sink, mode=Mode.NETASCII, blksize=8)  # CRs on many block edges
    assert sink.data == text
    request = upload_request(
        "u", Mode.NETASCII, len(text), blksize=None, windowsize=None, timeout=None,
        tsize=True, options=True,
    )
    assert ("tsize", str(len(text))) not in request.options  # size unknown once encoded
    run_transfer(
        BlockingChannel(reactor), SERVER, request, BytesReader(text), timer=request_timer(None),
        give_up_after=30.0, clock=reactor.seconds,
    )
    assert backend.files["u"] == text  # we encoded ("\r\n" survives only that way)


def test_a_full_disk_sends_error_3_and_aborts_the_writer() -> None:
    reactor, _, _ = fake_network({"f": payload(100_000)}, record=True)
    sink = MemorySink(fail_after=70_000)  # past the first 64 KiB batch
    with pytest.raises(TFTPError) as caught:
        get(reactor, "f", sink)
    assert caught.value.code == 3 and not caught.value.remote
    assert sink.aborted and not sink.committed
    assert [s.data[:4] for s in reactor.sent if s.data[:2] == b"\x00\x05"] == [b"\x00\x05\x00\x03"]


def test_a_download_over_max_size_is_refused_by_its_tsize() -> None:
    reactor, _, _ = fake_network({"f": payload(10_000)}, record=True)
    sink = MemorySink()
    with pytest.raises(TFTPError) as caught:
        get(reactor, "f", sink, max_size=9_999)
    assert caught.value.code == 3 and sink.aborted and sink.parts == []
    assert not any(s.data[:2] == b"\x00\x03" for s in reactor.sent)  # no DATA came


def test_a_failing_reader_ends_the_upload_with_an_error_and_is_closed() -> None:
    class Broken(BytesReader):
        closed = False

        def read(self, n: int) -> bytes:
            raise OSError(5, "Input/output error")

        def close(self) -> None:
            self.closed = True

    reactor, _, backend = fake_network(record=True)
    reader = Broken(b"")
    request = upload_request(
        "x", Mode.OCTET, 0, blksize=None, windowsize=None, timeout=None, tsize=False,
        options=False,
    )
    with pytest.raises(TFTPError) as caught:
        run_transfer(
            BlockingChannel(reactor), SERVER, request, reader, timer=request_timer(None),
            give_up_after=30.0, clock=reactor.seconds,
        )
    assert "read error: Input/output error" in str(caught.value) and reader.closed
    assert "x" not in backend.files


def test_a_silent_server_times_out_after_give_up_after() -> None:
    reactor = FakeUDPReactor()
    sink = MemorySink()
    request = download_request(
        "f", Mode.OCTET, blksize=None, windowsize=None, timeout=1, tsize=True, options=True
    )
    with pytest.raises(TFTPError) as caught:
        run_transfer(
            BlockingChannel(reactor), SERVER, request, sink, timer=request_timer(1),
            give_up_after=5.0, clock=reactor.seconds,
        )
    assert caught.value.timed_out and 5.0 <= reactor.seconds() < 7.0 and sink.aborted


# -- the UDP channel on real sockets -------------------------------------------------------------


def test_udp_channel_times_out_without_traffic_and_sends_and_receives() -> None:
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    channel = UDPChannel(peer.getsockname())
    try:
        started = time.monotonic()
        assert channel.receive(0.05) is None
        assert 0.04 <= time.monotonic() - started < 1.0
        assert channel.receive(0.0) is None  # never "wait forever"
        channel.sender(peer.getsockname())(b"ping")
        data, address = peer.recvfrom(100)
        assert data == b"ping"
        peer.sendto(b"pong", address)
        assert channel.receive(1.0) == (b"pong", peer.getsockname())
    finally:
        channel.close()
        peer.close()


def test_udp_channel_sizes_its_buffer_for_two_windows() -> None:
    channel = UDPChannel(("127.0.0.1", 9))
    try:
        before = channel.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        channel.expect(8192 + 5, 16)
        after = channel.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert after > before or after >= 2 * 16 * 8192
    finally:
        channel.close()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 in this Python")
def test_udp_channel_over_ipv6_reports_two_part_addresses() -> None:
    peer = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        peer.bind(("::1", 0))
    except OSError as error:  # pragma: no cover - depends on the host
        pytest.skip(f"no ::1 here: {error}")
    channel = UDPChannel(("::1", peer.getsockname()[1]))
    try:
        channel.sender(("::1", peer.getsockname()[1]))(b"x")
        _, address = peer.recvfrom(10)
        peer.sendto(b"y", address)
        received = channel.receive(1.0)
        assert received is not None and received[1] == ("::1", peer.getsockname()[1])
    finally:
        channel.close()
        peer.close()


def test_the_command_line_client_does_not_import_twisted() -> None:
    import subprocess

    code = (
        "import sys, netsvc.cli, netsvc.tftp_cli, netsvc.tftp.blocking;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# -- spinning before sleeping --------------------------------------------------------------------


def test_spinner_pauses_after_misses_for_longer_each_time_and_a_catch_resets_it() -> None:
    spinner = Spinner(limit=1e-4, misses_allowed=4, longest_pause=32)
    budgets = []
    for _ in range(4):
        budgets.append(spinner.budget())
        spinner.missed()
    assert budgets == [1e-4] * 4
    assert [spinner.budget() for _ in range(16)] == [0.0] * 16  # first pause: 16 waits
    for _ in range(4):
        assert spinner.budget() == 1e-4
        spinner.missed()
    assert [spinner.budget() for _ in range(32)] == [0.0] * 32  # then 32 (the longest)
    for _ in range(4):
        spinner.budget()
        spinner.missed()
    assert [spinner.budget() for _ in range(33)] == [0.0] * 32 + [1e-4]
    spinner.caught()  # the peer is fast again: misses and pauses start over
    for _ in range(3):
        spinner.missed()
    assert spinner.budget() == 1e-4
    spinner.missed()
    assert [spinner.budget() for _ in range(17)] == [0.0] * 16 + [1e-4]


def test_spinner_spin_returns_what_the_poll_found_or_none_after_its_budget() -> None:
    spinner = Spinner(limit=0.05, misses_allowed=1)
    answers = iter([None, None, "ready"])
    assert spinner.spin(lambda: next(answers)) == "ready"
    started = time.perf_counter()
    assert spinner.spin(lambda: None, most=0.01) is None  # capped below the limit
    assert time.perf_counter() - started < 0.04
    assert spinner.spin(lambda: "never polled") is None  # a miss started a pause


def test_udp_channel_spins_only_with_two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import netsvc.spin as spin

    monkeypatch.setattr(spin, "usable_cpus", lambda: 1)
    alone = UDPChannel(("127.0.0.1", 9))
    monkeypatch.setattr(spin, "usable_cpus", lambda: 2)
    shared = UDPChannel(("127.0.0.1", 9))
    never = UDPChannel(("127.0.0.1", 9), spinner=None)
    try:
        assert alone.spinner is None and never.spinner is None
        assert isinstance(shared.spinner, Spinner)
    finally:
        for channel in (alone, shared, never):
            channel.close()


def test_udp_channel_catches_a_datagram_while_spinning_and_counts_a_miss() -> None:
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    spinner = Spinner(limit=0.002, misses_allowed=1)
    channel = UDPChannel(peer.getsockname(), spinner=spinner)
    try:
        channel.sender(peer.getsockname())(b"hello")
        _, address = peer.recvfrom(10)
        peer.sendto(b"a", address)
        assert channel.receive(1.0) == (b"a", peer.getsockname())
        assert channel.receive(0.01) is None  # nothing comes: spun 2 ms, then slept
        assert spinner.budget() == 0.0  # one miss was enough to pause
    finally:
        channel.close()
        peer.close()

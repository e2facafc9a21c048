"""The lock-step steady state in C (netsvc.tftp.lockstep): the same results as the Python
engine alone, for every way a transfer can leave the steady state."""

from __future__ import annotations

import mmap
import os
import random
import shutil
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from netsvc.spin import IdleCpuCheck, Spinner, running_tasks
from netsvc.tftp import colocate, downloader, lockstep
from netsvc.tftp.downloader import (
    BOARD_SIZE,
    SHUTDOWN_MESSAGE,
    DownloadJob,
    DownloadReport,
    SenderSettings,
    run_job,
)
from netsvc.tftp.engine import Outcome, RetransmitTimer
from tests.interop_support import HOST
from tests.support import current_cpu
from tests.test_spin import LOADAVG_TEXTS

# pip install builds the C module wherever there is a C compiler: only without one may
# these tests skip (downloads then run in Python alone, which the other tests cover).
pytestmark = pytest.mark.skipif(
    not lockstep.available and shutil.which("cc") is None,
    reason="no C compiler: netsvc.tftp._lockstep is not built here",
)


def test_the_c_module_is_built() -> None:
    assert lockstep.available, "reinstall: pip install -e '.[dev]' builds netsvc.tftp._lockstep"


def test_send_all_sends_a_window_in_order() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, theirs:
        theirs.settimeout(5)
        window = [struct.pack("!HH", 3, block) + bytes([block]) * 512 for block in range(1, 71)]
        assert lockstep.send_all is not None
        assert lockstep.send_all(ours.fileno(), window) == 70  # more than one sendmmsg batch
        assert [theirs.recv(1024) for _ in window] == window
        assert lockstep.send_all(ours.fileno(), []) == 0
        with pytest.raises(TypeError):
            lockstep.send_all(ours.fileno(), [b"ok", "not bytes"])  # type: ignore[list-item]


def test_send_all_stops_at_a_datagram_that_cannot_go() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, theirs:
        ours.setblocking(False)
        window = [bytes(516)] * 2000  # more than the receiver's queue holds: EAGAIN
        assert lockstep.send_all is not None
        sent = lockstep.send_all(ours.fileno(), window)
        assert 0 < sent < len(window)
        assert lockstep.send_all(ours.fileno(), window) == 0  # still full


def test_send_all_raises_for_a_peer_that_has_gone() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours:
        theirs.close()  # the first send fails with ECONNREFUSED
        assert lockstep.send_all is not None
        with pytest.raises(ConnectionRefusedError):
            lockstep.send_all(ours.fileno(), [b"a", b"b"])


def test_send_all_leaves_a_closed_udp_port_for_a_recv_to_report() -> None:
    """The ICMP port unreachable answering one datagram fails the send of the next, once:
    send_all must not swallow it (a download would never learn that its client left)."""
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    address = closed.getsockname()
    closed.close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ours:
        ours.connect(address)
        assert lockstep.send_all is not None
        try:
            lockstep.send_all(ours.fileno(), [bytes(516)] * 8)
        except ConnectionRefusedError:
            return  # reported at once
        ours.settimeout(2)
        with pytest.raises(ConnectionRefusedError):
            ours.recv(1024)


def test_the_timer_arithmetic_is_the_python_timers() -> None:
    randomness = random.Random(7)
    for _ in range(200):
        timer = RetransmitTimer(1.0, 0.005, randomness.choice([0.05, 2.0, 255.0]))
        srtt: float | None = None
        rttvar = 0.0
        for _ in range(30):
            rtt = randomness.choice([0.0, -1e-4, 1e-5, 3e-4, 0.02, 1.5, 400.0])
            timer.sample(rtt)
            srtt, rttvar, rto = c_sample(srtt, rttvar, rtt, timer.minimum, timer.maximum)
            assert (srtt, rttvar, rto) == (timer.srtt, timer.rttvar, timer.rto)


def c_sample(
    srtt: float | None, rttvar: float, rtt: float, minimum: float, maximum: float
) -> tuple[float, float, float]:
    assert lockstep._lockstep is not None
    return lockstep._lockstep.timer_sample(srtt, rttvar, rtt, minimum, maximum)


def test_after_a_loss_the_c_loop_wakes_for_its_deadline_on_time() -> None:
    """Once a path has lost blocks, the C loop waits for the next timeout in ppoll: a 5 ms
    timer wakes it within 4 ms of its deadline (recv's SO_RCVTIMEO wakes one or two
    scheduler ticks late: 12 ms here, at 250 Hz). Never before the deadline either way."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a client that never answers
    try:
        server.bind((HOST, 0))
        silent.bind((HOST, 0))
        server.connect(silent.getsockname())
        waits: dict[bool, list[float]] = {True: [], False: []}
        for precise in (True, False) * 5:
            state = lockstep.PumpState(
                sock=server.fileno(), file=-1, size=1 << 20, blksize=8, block=1,
                in_flight=bytes(12), sent_at=time.monotonic(), staged=bytes(12), position=16,
                srtt=None, rttvar=0.0, rto=0.005, rto_min=0.005, rto_max=1.0,
                stop_at=time.monotonic() + 10, precise_wait=precise,
            )
            assert lockstep._lockstep is not None
            reason, _ = lockstep._lockstep.pump(state, None)
            assert reason == lockstep.Reason.WAKE
            waits[precise].append(time.monotonic() - state.sent_at)
    finally:
        server.close()
        silent.close()
    assert min(waits[True] + waits[False]) >= 0.005
    assert min(waits[True]) < 0.009  # the best of five: a busy CPU only delays a wake


# -- whole downloads through run_job, with and without the C loop ------------------------------


@attrs.define
class Client:
    """A lock-step client on a connected socket; ``misbehave(block, copy)`` may send
    something of its own for the ``copy``-th arrival of ``block`` and say whether to
    acknowledge it as usual."""

    sock: socket.socket
    blksize: int
    misbehave: Callable[[socket.socket, int, int], bool] | None = None
    received: bytearray = attrs.Factory(bytearray)
    arrivals: list[int] = attrs.Factory(list)  # wire block numbers, duplicates included

    def run(self) -> None:
        expected = 1
        copies: dict[int, int] = {}
        while True:
            try:
                datagram = self.sock.recv(65536)
            except OSError:
                return  # the test is over (timeout or closed)
            opcode, wire = struct.unpack_from("!HH", datagram)
            if opcode == 6:  # OACK
                self.sock.send(struct.pack("!HH", 4, 0))
                continue
            if opcode != 3:
                return  # ERROR: the server ended it
            self.arrivals.append(wire)
            new = wire == expected & 0xFFFF
            number = expected if new else expected - 1
            copies[number] = copies.get(number, 0) + 1
            if self.misbehave and not self.misbehave(self.sock, number, copies[number]):
                continue
            if new:
                self.received += datagram[4:]
                expected += 1
            self.sock.send(struct.pack("!HH", 4, (expected - 1) & 0xFFFF))
            if new and len(datagram) - 4 < self.blksize:
                return  # the last block (a real client would dally here)


@attrs.define
class Result:
    report: DownloadReport
    client: Client
    pumped: list[tuple[lockstep.Reason, int]]  # (why the C loop returned, blocks it acked)


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Result]]:
    sockets: list[socket.socket] = []

    def serve(
        data: bytes,
        *,
        blksize: int = 512,
        pump: bool = True,
        size: int | None = None,
        misbehave: Callable[[socket.socket, int, int], bool] | None = None,
        alone: bool = False,
        spin: bool = False,
        preamble: bytes | None = None,
        follow_client_cpu: bool = False,
        client_on_cpu: int | None = None,
    ) -> Result:
        path = tmp_path / "file"
        path.write_bytes(data)
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sockets.extend((server, client))
        server.bind((HOST, 0))
        client.bind((HOST, 0))
        server.connect(client.getsockname())
        client.connect(server.getsockname())
        client.settimeout(5)
        pumped: list[tuple[lockstep.Reason, int]] = []
        real_pump = lockstep.pump

        def counting_pump(engine: Any, *args: Any, **kwargs: Any) -> Any:
            before = engine.stats.blocks
            reason, datagram = real_pump(engine, *args, **kwargs)
            pumped.append((reason, engine.stats.blocks - before))
            return reason, datagram

        monkeypatch.setattr(lockstep, "pump", counting_pump)
        monkeypatch.setattr(lockstep, "available", pump)
        job = DownloadJob(
            SenderSettings(
                blksize=blksize, windowsize=1, preamble=preamble, initial_rto=0.05,
                min_rto=0.01, max_rto=0.05, give_up_after=5.0, first_contact_retries=4,
            ),
            size=len(data) if size is None else size,
            netascii=False,
            max_duration=None,
            spin=spin,
            follow_client_cpu=follow_client_cpu,
        )
        board = mmap.mmap(-1, BOARD_SIZE)
        board[0] = 1 if alone else 2
        peer = Client(client, blksize, misbehave)

        def run_client() -> None:
            if client_on_cpu is not None:
                os.sched_setaffinity(0, {client_on_cpu})
            peer.run()

        thread = threading.Thread(target=run_client, daemon=True)
        thread.start()
        fd = os.open(path, os.O_RDONLY)
        try:
            report = run_job(job, server.fileno(), fd, board)
        finally:
            os.close(fd)
        thread.join(10)
        assert not thread.is_alive(), "the client did not finish"
        return Result(report, peer, pumped)

    yield serve
    for sock in sockets:
        sock.close()


def payload(size: int) -> bytes:
    return random.Random(size).randbytes(size)


@pytest.mark.parametrize(
    ("size", "blksize"),
    [(0, 512), (1, 512), (511, 512), (512, 512), (5 * 512, 512), (100_000, 512),
     (100_003, 1468), (70_000, 65464), (3 * 65464, 65464),
     # across the C loop's read-ahead buffers (64 KiB), which 1468 does not divide
     (3 * 65536 + 1000, 512), (300_001, 1468), (65536 * 2, 16384)],
)
def test_downloads_are_the_same_with_and_without_the_c_loop(
    serve: Callable[..., Result], size: int, blksize: int
) -> None:
    data = payload(size)
    with_c = serve(data, blksize=blksize)
    python = serve(data, blksize=blksize, pump=False)
    for result in (with_c, python):
        assert bytes(result.client.received) == data
        assert result.report.outcome is Outcome.COMPLETE
        assert result.report.stats.bytes == size
        assert result.report.stats.blocks == size // blksize + 1
        assert result.report.stats.retransmits == 0
    assert with_c.client.arrivals == python.client.arrivals
    assert python.pumped == []
    blocks_in_c = sum(acked for _, acked in with_c.pumped)
    # The C loop runs from block 1 until the next block is not a full one.
    assert blocks_in_c == max(0, size // blksize - 1)


def test_block_numbers_roll_over_in_the_c_loop(serve: Callable[..., Result]) -> None:
    data = payload(66_000 * 8 + 3)
    result = serve(data, blksize=8)
    assert bytes(result.client.received) == data
    arrivals = result.client.arrivals
    wrap = arrivals.index(0)  # not at a fixed index: a spurious timeout adds an arrival
    assert arrivals[wrap - 2 : wrap + 3] == [65534, 65535, 0, 1, 2]
    assert sum(acked for _, acked in result.pumped) > 65536


def test_after_an_oack_the_c_loop_takes_over_from_block_1(
    serve: Callable[..., Result],
) -> None:
    data = payload(40 * 512)
    result = serve(data, preamble=b"\x00\x06blksize\x00512\x00")
    assert bytes(result.client.received) == data
    assert result.report.outcome is Outcome.COMPLETE
    assert result.report.stats.blocks == 41
    assert sum(acked for _, acked in result.pumped) == 39


def test_a_duplicate_ack_sends_nothing_again(serve: Callable[..., Result]) -> None:
    data = payload(30 * 512)

    def repeat_ack(sock: socket.socket, block: int, copy: int) -> bool:
        if block == 10 and copy == 1:
            sock.send(struct.pack("!HH", 4, 9))  # an old ACK, arriving late
        return True

    result = serve(data, misbehave=repeat_ack)
    assert bytes(result.client.received) == data
    assert result.report.stats.retransmits == 0
    assert result.client.arrivals == list(range(1, 32))  # every block exactly once
    assert any(reason is lockstep.Reason.DATAGRAM for reason, _ in result.pumped)


def test_a_lost_ack_is_recovered_by_the_engines_timer(serve: Callable[..., Result]) -> None:
    data = payload(30 * 512)

    def lose_ack(sock: socket.socket, block: int, copy: int) -> bool:
        return not (block == 12 and copy == 1)  # the first ACK of block 12 is lost

    result = serve(data, misbehave=lose_ack)
    assert bytes(result.client.received) == data
    assert result.report.outcome is Outcome.COMPLETE
    assert result.report.stats.retransmits >= 1 and result.report.stats.timeouts >= 1
    assert any(reason is lockstep.Reason.WAKE for reason, _ in result.pumped)
    # After the retransmission the C loop takes over again.
    assert sum(acked for _, acked in result.pumped) > 20


def test_the_report_carries_the_floor_a_spurious_timeout_taught(
    serve: Callable[..., Result],
) -> None:
    data = payload(30 * 512)

    def late_ack(sock: socket.socket, block: int, copy: int) -> bool:
        if block == 12 and copy == 1:
            time.sleep(0.03)  # late, not lost: the server's timer (at most 50 ms) fires
        return True  # and both copies are acknowledged: the second ACK is a duplicate

    result = serve(data, misbehave=late_ack)
    assert bytes(result.client.received) == data
    assert result.report.stats.retransmits >= 1
    # Raised from serve's min_rto (10 ms) by the late ACK, at most the maximum (50 ms).
    assert 0.015 < result.report.timer_floor <= 0.05
    quiet = serve(data)
    if quiet.report.stats.retransmits == 0:  # (a busy machine may delay an ACK too)
        assert quiet.report.timer_floor == pytest.approx(0.01)  # serve's min_rto


def test_an_error_from_the_client_ends_it_with_the_blocks_acked_so_far(
    serve: Callable[..., Result],
) -> None:
    data = payload(30 * 512)

    def give_up(sock: socket.socket, block: int, copy: int) -> bool:
        if block == 15:
            sock.send(struct.pack("!HH", 5, 3) + b"disk full\x00")
            sock.settimeout(0.2)  # nothing more is coming
            return False
        return True

    result = serve(data, misbehave=give_up)
    assert result.report.outcome is Outcome.PEER_ERROR
    assert result.report.stats.error_code == 3
    assert result.report.stats.error_message == "disk full"
    assert result.report.stats.blocks == 14 and result.report.stats.bytes == 14 * 512


@pytest.mark.parametrize("pump", [True, False], ids=["c-loop", "python"])
@pytest.mark.parametrize("leaves", ["after-acking-block-10", "without-acking-the-last"])
def test_a_client_whose_port_closed_ends_the_download_at_once(
    serve: Callable[..., Result], pump: bool, leaves: str
) -> None:
    """The ICMP port unreachable that answers our next block ends it, as tftpd-hpa's
    recv error does, instead of retransmissions until the idle timeout (5 s here)."""
    data = payload(30 * 512 + 100)  # 31 blocks
    last = 31

    def leave(sock: socket.socket, block: int, copy: int) -> bool:
        if leaves == "after-acking-block-10" and block == 10:
            server = sock.getpeername()
            # Deaf to the server from now on (connected elsewhere), before it can send
            # block 11: that comes back as ICMP port unreachable, whenever it is sent.
            sock.connect((HOST, 9))
            sock.sendto(struct.pack("!HH", 4, 10), server)
            sock.settimeout(0.2)  # nothing more is coming
            return False
        if leaves == "without-acking-the-last" and block == last:
            sock.close()  # curl, when its final ACK is lost: it has the file and exits
            return False
        return True

    result = serve(data, misbehave=leave, pump=pump)
    report = result.report
    assert report.outcome is Outcome.PEER_GONE
    assert "port is closed" in report.stats.error_message
    assert report.stats.finished is not None
    assert report.stats.finished - report.stats.started < 1.0
    acked = 10 if leaves == "after-acking-block-10" else last - 1
    assert report.stats.blocks == acked and report.stats.bytes == acked * 512
    if pump and leaves == "after-acking-block-10":
        assert any(reason is lockstep.Reason.REFUSED for reason, _ in result.pumped)


def test_a_file_shorter_than_announced_ends_with_what_is_there(
    serve: Callable[..., Result],
) -> None:
    data = payload(10 * 512 + 100)
    with_c = serve(data, size=40 * 512)  # the file shrank after the server opened it
    python = serve(data, size=40 * 512, pump=False)
    for result in (with_c, python):
        assert bytes(result.client.received) == data
        assert result.report.outcome is Outcome.COMPLETE
    assert any(reason is lockstep.Reason.READ for reason, _ in with_c.pumped)


@pytest.mark.parametrize("alone", [True, False], ids=["alone-spinning", "busy-sleeping"])
def test_polling_or_not_the_bytes_are_the_same(
    serve: Callable[..., Result], alone: bool
) -> None:
    data = payload(200 * 512)
    result = serve(data, alone=alone, spin=True)
    assert bytes(result.client.received) == data
    assert result.report.stats.retransmits == 0


@pytest.mark.parametrize(("text", "running"), LOADAVG_TEXTS)
def test_the_c_loop_reads_loadavg_as_the_spinner_does(text: str, running: int | None) -> None:
    assert lockstep._lockstep is not None
    assert running_tasks(text) == running
    assert lockstep._lockstep.running_tasks(text.encode()) == (-1 if running is None else running)


@pytest.mark.parametrize("pump", [True, False], ids=["c-loop", "python-loop"])
@pytest.mark.parametrize(("running", "polls"), [(1, True), (9, False)], ids=["free", "busy"])
def test_a_download_polls_only_while_a_cpu_is_free(
    serve: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    pump: bool,
    running: int,
    polls: bool,
) -> None:
    loadavg = tmp_path / "loadavg"
    loadavg.write_text(f"0.5 0.5 0.5 {running}/300 4242\n")
    # Never pausing, so that every poll that finds nothing is counted as a miss.
    spinner = Spinner(limit=1e-4, misses_allowed=10**9, idle_cpu=IdleCpuCheck(str(loadavg), 2))
    monkeypatch.setattr(downloader, "useful_spinner", lambda: spinner)

    def slow_client(sock: socket.socket, block: int, copy: int) -> bool:
        time.sleep(0.002)  # later than any poll waits: each one is a miss
        return True

    data = payload(20 * 512 + 7)
    result = serve(data, pump=pump, alone=True, spin=True, misbehave=slow_client)
    assert bytes(result.client.received) == data
    misses = spinner.export_state()[0]
    assert (misses >= 10) if polls else (misses == 0), misses


def test_sigterm_in_the_c_loop_ends_the_download_with_an_error(
    serve: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(100 * 512)
    stopped = threading.Event()

    def stall(sock: socket.socket, block: int, copy: int) -> bool:
        if block == 40:
            # Hold the ACK; the server's child is stopped while it waits in C.
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
            stopped.set()
            sock.settimeout(1)
            return False
        return True

    previous = signal.signal(signal.SIGTERM, downloader.stop_download)
    try:
        result = serve(data, misbehave=stall)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.is_set()
    assert result.report.outcome is Outcome.LOCAL_ERROR
    assert result.report.stats.error_message == SHUTDOWN_MESSAGE
    # Blocks 1..39 were acknowledged, in C; the engine knows it.
    assert result.report.stats.blocks == 39 and result.report.stats.bytes == 39 * 512


@pytest.fixture
def sigterm_stops_downloads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """SIGTERM handled as in a worker process running a download."""
    monkeypatch.setattr(downloader, "_stop_requested", False)
    previous = signal.signal(signal.SIGTERM, downloader.stop_download)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.usefixtures("sigterm_stops_downloads")
def test_sigterm_while_a_download_starts_still_tells_the_client(
    serve: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server stops right after the worker sent block 1, before its loop runs: the
    # download still ends with ERROR 0 and a report (it used to escape, report-less).
    real = SenderSettings.new_sender

    def new_sender_then_sigterm(self: SenderSettings, *args: Any) -> Any:
        engine = real(self, *args)
        signal.raise_signal(signal.SIGTERM)
        return engine

    monkeypatch.setattr(SenderSettings, "new_sender", new_sender_then_sigterm)
    result = serve(payload(100 * 512))
    assert result.report.outcome is Outcome.LOCAL_ERROR
    assert result.report.stats.error_message == SHUTDOWN_MESSAGE
    assert result.report.stats.blocks == 0


@pytest.mark.usefixtures("sigterm_stops_downloads")
def test_sigterm_after_the_last_ack_leaves_the_report_complete(
    serve: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = downloader.drive_download

    def drive_then_sigterm(*args: Any, **kwargs: Any) -> Any:
        engine = real(*args, **kwargs)
        signal.raise_signal(signal.SIGTERM)  # the server stops just as the download ends
        return engine

    monkeypatch.setattr(downloader, "drive_download", drive_then_sigterm)
    data = payload(10 * 512 + 7)
    result = serve(data)
    assert result.report.outcome is Outcome.COMPLETE
    assert bytes(result.client.received) == data


@pytest.mark.parametrize("pump", [True, False], ids=["c-loop", "python-loop"])
def test_a_download_moves_to_its_clients_cpu(
    serve: Callable[..., Result],
    start_on_first_cpu: tuple[int, int],
    pump: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, there = start_on_first_cpu
    # Where each check left this thread, seen at once: moved there, or there already (the
    # scheduler keeps a waker and its wakee together). It may move it back later (a move
    # is a hint), most often here, where client and server share the GIL.
    cpus_after_c_checks: list[int] = []
    cpus_after_python_checks: list[int] = []
    real_c_pump = lockstep._lockstep.pump  # type: ignore[union-attr]
    real_move = colocate.move_to_incoming_cpu

    def c_pump(state: lockstep.PumpState, board: Any) -> Any:
        try:
            return real_c_pump(state, board)
        finally:
            cpus_after_c_checks.append(state.follow_cpu)

    def move(sock: socket.socket) -> bool:
        known = real_move(sock)
        cpus_after_python_checks.append(current_cpu())
        return known

    monkeypatch.setattr(lockstep._lockstep, "pump", c_pump)
    monkeypatch.setattr(colocate, "move_to_incoming_cpu", move)
    data = payload(100 * 512)
    result = serve(data, pump=pump, follow_client_cpu=True, client_on_cpu=there)
    assert bytes(result.client.received) == data
    assert result.report.outcome is Outcome.COMPLETE
    if pump:  # the C loop received every ACK but the last one, and did the moving
        assert result.pumped == [(lockstep.Reason.READ, 99)]
        assert cpus_after_c_checks == [there]
    else:
        assert cpus_after_c_checks == [] and cpus_after_python_checks[-1] == there


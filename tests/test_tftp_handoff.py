"""Downloads in processes of their own: the helper's messages, the child's loop, and the
real server (``twistd netsvc-tftp``) handing downloads over, stopping and losing them."""

from __future__ import annotations

import functools
import io
import mmap
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from twisted.internet.task import Clock

from netsvc.spin import Spinner
from netsvc.tftp import packets
from netsvc.tftp.backend import FilesystemBackend
from netsvc.tftp.downloader import (
    BOARD_JOBS_TAKEN,
    BOARD_SIZE,
    TIME_LIMIT_MESSAGE,
    DownloadJob,
    DownloadReport,
    SenderSettings,
    drive_download,
)
from netsvc.tftp.engine import BlockSender, Outcome, TransferStats
from netsvc.tftp.files import BackendError
from netsvc.tftp.handoff import (
    HELPER_PATIENCE,
    HELPER_RESTART_INTERVAL,
    HelperWatchdog,
    JobProgress,
)
from netsvc.tftp.packets import ACK, ERROR, OACK, RRQ, ErrorCode, encode_data, parse
from netsvc.tftp.server import SMALL_DOWNLOAD_BLOCKS
from netsvc.tftp.server import TFTPServer as Server
from tests.interop_support import HOST, TFTPServer, read_whole

T = TypeVar("T")

DATA = bytes(range(256)) * 5  # 1,280 bytes: blocks of 512, 512 and 256
# The file the server-level tests download: 35 blocks of 512 (the last one 256 bytes),
# more than a server serves itself (SMALL_DOWNLOAD_BLOCKS), so it is handed over.
FILE = bytes(range(256)) * 69
assert len(FILE) // 512 + 1 > SMALL_DOWNLOAD_BLOCKS


def settings(**changes: object) -> SenderSettings:
    values: dict[str, object] = {
        "blksize": 512, "windowsize": 1, "preamble": None, "initial_rto": 0.05,
        "min_rto": 0.01, "max_rto": 0.05, "give_up_after": 5.0, "first_contact_retries": 4,
    }
    values.update(changes)
    return SenderSettings(**values)  # type: ignore[arg-type]


def job(max_duration: float | None = None, **changes: object) -> DownloadJob:
    return DownloadJob(
        settings(**changes), size=len(DATA), netascii=False, max_duration=max_duration
    )


# -- messages ---------------------------------------------------------------------------------


@pytest.mark.parametrize("preamble", [None, b"\x00\x06blksize\x00512\x00"])
@pytest.mark.parametrize("lowest_rto", [None, 0.005])
def test_a_job_survives_its_trip_to_the_helper(
    preamble: bytes | None, lowest_rto: float | None
) -> None:
    sent = DownloadJob(
        settings(preamble=preamble, lowest_rto=lowest_rto), size=7, netascii=True,
        max_duration=3.5, spin=True, follow_client_cpu=True,
    )
    assert DownloadJob.decode(sent.encode()) == sent


def test_the_engine_a_job_builds_may_lower_its_floor_to_lowest_rto() -> None:
    engine = settings(min_rto=0.04, lowest_rto=0.005).new_sender(
        lambda datagram: None, lambda size: bytes(size), 0.0
    )
    assert (engine.timer.minimum, engine.timer.lowest) == (0.04, 0.005)
    assert settings().new_sender(lambda d: None, bytes, 0.0).timer.lowest == 0.01


def _a_job() -> bytes:
    return job().encode()


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"{",
        b'{"size": 1}',
        b"TFJ1",
        _a_job()[:-1],  # one byte short
        b"XXXX" + _a_job()[4:],  # not a job's tag
        _a_job() + b"\x00\x06",  # bytes after a job that has no OACK
        DownloadReport(Outcome.COMPLETE, TransferStats(), pid=1).encode(),
    ],
)
def test_anything_but_a_job_is_refused(garbage: bytes) -> None:
    with pytest.raises(ValueError):
        DownloadJob.decode(garbage)


@pytest.mark.parametrize(
    "report",
    [
        DownloadReport(
            Outcome.COMPLETE,
            TransferStats(started=5.25, blocks=3, bytes=1280, retransmits=2, error_code=None),
            pid=1234,
            timer_floor=0.0375,
        ),
        DownloadReport(
            Outcome.PEER_ERROR,
            TransferStats(
                started=1.5, finished=2.75, timeouts=1, error_code=8, error_message="tsize? ä"
            ),
            pid=7,
        ),
    ],
)
def test_a_report_survives_the_pipe(report: DownloadReport) -> None:
    assert DownloadReport.decode(report.encode()) == report


def test_garbage_is_no_report() -> None:
    report = DownloadReport(Outcome.TIMED_OUT, TransferStats(), pid=1).encode()
    for garbage in (
        b"",
        b"{",
        b'{"outcome": "complete"}',
        report[:-1],  # one byte short: a worker that died while writing it
        b"XXXX" + report[4:],
        report[:4] + b"\x09" + report[5:],  # no such outcome
        job().encode(),
    ):
        assert DownloadReport.decode(garbage) is None


# -- the child's loop, over loopback --------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the child's socket connected to the client, the client's socket)."""
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind((HOST, 0))
    client.settimeout(5)
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((HOST, 0))
    server.connect(client.getsockname())
    client.connect(server.getsockname())
    yield server, client
    server.close()
    client.close()


def in_thread(run: Callable[[], BlockSender]) -> Callable[[], BlockSender]:
    """Start ``run`` in a thread; the returned function joins it and gives its result."""
    result: list[BlockSender] = []
    thread = threading.Thread(target=lambda: result.append(run()), daemon=True)
    thread.start()

    def join() -> BlockSender:
        thread.join(10)
        assert result, "drive_download did not return"
        return result[0]

    return join


@pytest.mark.parametrize("spinner", [None, Spinner()], ids=["sleeping", "spinning"])
def test_the_child_serves_the_file_to_the_end(
    pair: tuple[socket.socket, socket.socket], spinner: Spinner | None
) -> None:
    server, client = pair
    read = io.BytesIO(DATA).read
    finished = in_thread(lambda: drive_download(job(), server, read, spinner=spinner))
    received = b""
    for block in (1, 2, 3):
        datagram = client.recv(1024)
        assert datagram[:4] == struct.pack("!HH", 3, block)
        received += datagram[4:]
        client.send(struct.pack("!HH", 4, block))
    engine = finished()
    assert received == DATA
    assert engine.outcome is Outcome.COMPLETE and engine.stats.bytes == len(DATA)


def test_the_child_sends_a_window_at_once(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    finished = in_thread(
        lambda: drive_download(job(windowsize=4), server, io.BytesIO(DATA).read)
    )
    blocks = [client.recv(1024) for _ in range(3)]  # the whole file is one window
    assert [struct.unpack("!HH", b[:4]) for b in blocks] == [(3, 1), (3, 2), (3, 3)]
    client.send(struct.pack("!HH", 4, 3))
    engine = finished()
    assert b"".join(b[4:] for b in blocks) == DATA
    assert engine.outcome is Outcome.COMPLETE


def test_a_window_to_a_client_that_has_gone_ends_the_download_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The client's port closes after the first window: the next window's first block
    comes back as ICMP port unreachable, which fails the send of the second one (the
    error is reported once, to whichever call comes next). It must still end the
    download as peer-gone, not leave it retrying until it gives up."""
    server, client = pair
    window = DownloadJob(settings(windowsize=8), size=len(FILE), netascii=False,
                         max_duration=None)
    started = time.monotonic()
    finished = in_thread(lambda: drive_download(window, server, io.BytesIO(FILE).read))
    for _ in range(8):
        client.recv(1024)
    client.send(struct.pack("!HH", 4, 8))
    client.close()
    engine = finished()
    assert engine.outcome is Outcome.PEER_GONE
    assert time.monotonic() - started < 2.0  # give_up_after is 5 s


class CountingSpinner(Spinner):
    def __init__(self) -> None:
        super().__init__()
        self.spins = 0

    def spin(self, poll: Callable[[], T], most: float | None = None) -> T | None:
        self.spins += 1
        return super().spin(poll, most)


@pytest.mark.parametrize("alone", [True, False])
def test_the_child_polls_awake_only_while_the_server_has_nothing_else(
    pair: tuple[socket.socket, socket.socket], alone: bool
) -> None:
    server, client = pair
    spinner = CountingSpinner()
    read = io.BytesIO(DATA).read
    finished = in_thread(
        lambda: drive_download(job(), server, read, spinner=spinner, alone=lambda: alone)
    )
    for block in (1, 2, 3):
        while client.recv(1024)[:4] != struct.pack("!HH", 3, block):
            pass  # a retransmission
        client.send(struct.pack("!HH", 4, block))
    assert finished().outcome is Outcome.COMPLETE
    assert (spinner.spins >= 3) is alone and (spinner.spins == 0) is not alone


def test_a_silent_client_is_retried_then_given_up(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    started = time.monotonic()
    engine = drive_download(job(give_up_after=0.3), server, lambda size: DATA[:size])
    assert engine.outcome is Outcome.TIMED_OUT and engine.stats.retransmits >= 2
    assert time.monotonic() - started < 3
    first = client.recv(1024)
    assert first[:4] == b"\x00\x03\x00\x01" and client.recv(1024) == first  # sent again


def test_a_read_error_reaches_the_client(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair

    def failing_read(size: int) -> bytes:
        raise BackendError("disk went away", ErrorCode.ACCESS_VIOLATION)

    engine = drive_download(job(), server, failing_read)
    assert engine.outcome is Outcome.LOCAL_ERROR
    assert client.recv(1024) == b"\x00\x05\x00\x02disk went away\x00"


def test_the_time_limit_holds_in_the_child(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    patient = job(max_duration=0.2, first_contact_retries=100)
    engine = drive_download(patient, server, lambda size: DATA[:size])
    assert engine.outcome is Outcome.LOCAL_ERROR
    assert engine.stats.error_message == TIME_LIMIT_MESSAGE
    last = b""
    client.settimeout(0.5)
    while True:
        try:
            last = client.recv(1024)
        except TimeoutError:
            break
    assert last == b"\x00\x05\x00\x00" + TIME_LIMIT_MESSAGE.encode() + b"\x00"


# -- the watchdog over the helper ----------------------------------------------------------


class Watched:
    """A watchdog over a helper's job counts, on a Clock; ``stuck``: what it reported."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.board = mmap.mmap(-1, BOARD_SIZE)
        self.jobs = JobProgress(self.board)
        self.stuck: list[JobProgress] = []
        self.watchdog = HelperWatchdog(self.clock, self.stuck.append, patience=2.0)

    def hand_over(self, handed: int) -> None:
        self.jobs.handed = handed
        self.watchdog.handed_over(self.jobs)

    def helper_takes(self, count: int) -> None:
        """The helper's count of jobs taken, written as netsvc.tftp.workers.serve_jobs does."""
        self.board[BOARD_JOBS_TAKEN : BOARD_JOBS_TAKEN + 8] = count.to_bytes(8, "little")

    def checks_due(self) -> int:
        return len(self.clock.getDelayedCalls())


def test_the_watchdog_replaces_a_helper_only_when_it_took_none_of_the_waiting_jobs() -> None:
    w = Watched()
    w.hand_over(3)
    w.clock.advance(1.9)
    w.helper_takes(1)  # slow, but taking them
    w.hand_over(4)  # a check is due already: no second one
    assert w.checks_due() == 1
    w.clock.advance(0.1)
    assert w.stuck == [] and w.jobs.waiting() == 3
    w.clock.advance(1.99)
    assert w.stuck == []
    w.clock.advance(0.01)  # 2 s with jobs waiting and none taken
    assert w.stuck == [w.jobs]
    assert w.checks_due() == 0


def test_the_watchdog_rests_once_every_job_is_taken() -> None:
    w = Watched()
    w.hand_over(1)
    w.helper_takes(1)
    w.clock.advance(2.0)
    assert w.checks_due() == 0  # nothing waits: no more checks
    w.hand_over(2)  # the next job starts the checks again
    assert w.checks_due() == 1
    w.clock.advance(1.0)
    w.helper_takes(2)
    w.clock.advance(1.0)
    assert w.stuck == [] and w.checks_due() == 0
    w.hand_over(3)
    w.watchdog.cancel()
    assert w.checks_due() == 0


class DeadHelper:
    """Stands in for a helper the server found dead (no process behind it)."""

    def __init__(self) -> None:
        self.jobs = JobProgress(mmap.mmap(-1, BOARD_SIZE))
        self.gone = "Broken pipe"
        self.abandoned = False

    def abandon(self) -> None:
        self.abandoned = True


def test_helpers_that_keep_failing_are_replaced_at_most_once_per_interval(
    tmp_path: Path,
) -> None:
    clock = Clock()
    server = Server(clock, FilesystemBackend(str(tmp_path)))

    def fail() -> float:
        """A helper that is found dead; the delay of its replacement's start."""
        helper = DeadHelper()
        server.helper = helper  # type: ignore[assignment]
        server.helper_gone(helper)  # type: ignore[arg-type]
        assert helper.abandoned and server.helper is None
        (restart,) = clock.getDelayedCalls()
        server.helper_gone(helper)  # type: ignore[arg-type]  # found again: no second start
        assert clock.getDelayedCalls() == [restart]
        delay = restart.getTime() - clock.seconds()
        clock.advance(delay)
        return delay

    assert fail() == 0.0  # the first at once
    clock.advance(1.0)
    assert fail() == HELPER_RESTART_INTERVAL - 1.0  # then one per interval at most
    clock.advance(HELPER_RESTART_INTERVAL + 2.0)
    assert fail() == 0.0


# -- the real server ------------------------------------------------------------------------


def ready(worker: int) -> bool:
    """Whether a worker waits for a job: a spare one is ready only after its rehearsal
    (netsvc.tftp.workers.rehearse), which never waits for a packet; before, a download
    would go to a newly forked worker instead."""
    try:
        with open(f"/proc/{worker}/wchan") as wchan:
            waiting_in = wchan.read()
        with open(f"/proc/{worker}/stat") as stat:
            text = stat.read()
    except OSError:
        return False
    sleeping = text[text.rfind(")") + 2] == "S"
    if waiting_in in ("", "0"):  # a kernel that does not say: sleeping will do
        return sleeping
    return sleeping and "wait_for_more_packets" in waiting_in


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    text = stat.read()
            except OSError:
                continue
            if int(text[text.rfind(")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return found


def gone(pid: int) -> bool:
    return not running(pid)


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (where nobody reaps orphans, as in
    some containers, an ended process stays one)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return False
    return text[text.rfind(")") + 2] != "Z"


def helper_of(server: TFTPServer) -> int | None:
    assert server.process is not None
    for pid in children(server.process.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"netsvc.tftp.workers" in cmdline.read():
                    return pid
        except OSError:
            continue
    return None


def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def client_socket() -> socket.socket:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind((HOST, 0))
    client.settimeout(5)
    return client


def start_download(
    port: int, client: socket.socket | None = None
) -> tuple[socket.socket, tuple[str, int]]:
    """Request ``f`` and read its DATA 1 without acknowledging it: the download waits."""
    client = client or client_socket()
    client.sendto(b"\x00\x01f\x00octet\x00", (HOST, port))
    datagram, transfer = client.recvfrom(1024)
    assert datagram[:4] == b"\x00\x03\x00\x01"
    return client, transfer


def finish_download(client: socket.socket, transfer: tuple[str, int]) -> bytes:
    received, block = b"", 1
    client.sendto(struct.pack("!HH", 4, 1), transfer)
    received = FILE[:512]  # its DATA 1 was read by start_download
    while True:
        datagram = client.recv(1024)
        opcode, number = struct.unpack("!HH", datagram[:4])
        assert opcode == 3, datagram
        if number == block:
            continue  # a retransmission of what we already have
        block = number
        received += datagram[4:]
        client.sendto(struct.pack("!HH", 4, block), transfer)
        if len(datagram) < 516:
            return received


def download_whole(port: int) -> None:
    client, transfer = start_download(port)
    try:
        assert finish_download(client, transfer) == FILE
    finally:
        client.close()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., TFTPServer]]:
    started: list[TFTPServer] = []

    def make(*flags: str) -> TFTPServer:
        root = tmp_path / "root"
        root.mkdir(exist_ok=True)
        (root / "f").write_bytes(FILE)
        (root / "small").write_bytes(DATA)
        server = TFTPServer(
            root, tmp_path / f"twistd{len(started)}.log", *flags,
            json_log=tmp_path / f"events{len(started)}.json",
        ).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def start_with_spares(
    make_server: Callable[..., TFTPServer], spares: int, *flags: str
) -> tuple[TFTPServer, int]:
    """A server keeping ``spares`` download workers, once they are all there; and the
    pid of its helper."""
    server = make_server("--spare-workers", str(spares), *flags)
    helper = helper_of(server)
    assert helper is not None
    wait_for(lambda: len(children(helper)) == spares and all(map(ready, children(helper))))
    return server, helper


def test_a_download_runs_in_a_worker_of_the_helper_which_serves_the_next_one_too(
    make_server: Callable[..., TFTPServer],
) -> None:
    server, helper = start_with_spares(make_server, 0)  # the first download starts one
    client, transfer = start_download(server.port)
    try:
        wait_for(lambda: len(children(helper)) == 1)
        (worker,) = children(helper)
        assert finish_download(client, transfer) == FILE
    finally:
        client.close()
    # Once the server has the report, the helper has the worker's word that it is idle.
    wait_for(lambda: len(server.events()) == 1)
    download_whole(server.port)
    wait_for(lambda: len(server.events()) == 2)
    events = server.events()
    assert [(e["outcome"], int(e["bytes"])) for e in events] == [("complete", len(FILE))] * 2
    assert children(helper) == [worker]  # reused: no second worker was forked


def test_a_small_download_is_served_by_the_server_itself(
    make_server: Callable[..., TFTPServer],
) -> None:
    server, helper = start_with_spares(make_server, 0)
    client = client_socket()
    try:
        received, _ = read_whole(client, server.port, b"\x00\x01small\x00octet\x00")
    finally:
        client.close()
    assert received == DATA
    wait_for(server.events)
    assert [e["outcome"] for e in server.events()] == ["complete"]
    assert children(helper) == []  # no worker was started for it
    download_whole(server.port)  # while a bigger file gets one
    assert len(children(helper)) == 1


def test_spare_workers_are_ready_before_the_first_client(
    make_server: Callable[..., TFTPServer],
) -> None:
    server, helper = start_with_spares(make_server, 3)
    spares = set(children(helper))
    download_whole(server.port)
    wait_for(server.events)
    assert set(children(helper)) == spares  # a spare served it: none was forked


def test_downloads_at_once_get_workers_of_their_own(
    make_server: Callable[..., TFTPServer],
) -> None:
    server, helper = start_with_spares(make_server, 0)
    first, first_transfer = start_download(server.port)
    second, second_transfer = start_download(server.port)
    try:
        wait_for(lambda: len(children(helper)) == 2)
        assert finish_download(second, second_transfer) == FILE
        assert finish_download(first, first_transfer) == FILE
    finally:
        first.close()
        second.close()
    wait_for(lambda: len(server.events()) == 2)
    assert [e["outcome"] for e in server.events()] == ["complete", "complete"]


def test_one_process_means_no_helper(make_server: Callable[..., TFTPServer]) -> None:
    server = make_server("--one-process")
    assert helper_of(server) is None
    download_whole(server.port)


def test_stopping_the_server_stops_its_downloads_and_tells_their_clients(
    make_server: Callable[..., TFTPServer],
) -> None:
    server, helper = start_with_spares(make_server, 2)
    assert server.process is not None
    client, transfer = start_download(server.port)
    try:
        workers = children(helper)  # the spares (one has the download) or a third for it
        server.process.send_signal(signal.SIGTERM)  # as twistd is stopped, not the group
        while True:
            datagram, source = client.recvfrom(1024)
            if datagram[:2] == b"\x00\x05":
                break  # (FILE 1 may come again before the stop)
        assert source == transfer
        assert datagram == b"\x00\x05\x00\x00server shutting down\x00"
        server.process.wait(timeout=10)
    finally:
        client.close()
    for pid in (helper, *workers):  # the one in the download and the idle ones
        wait_for(functools.partial(gone, pid))
    assert [e["outcome"] for e in server.events()] == ["local-error"]


def test_a_download_whose_process_dies_is_logged_and_frees_its_slot(
    make_server: Callable[..., TFTPServer],
) -> None:
    server, helper = start_with_spares(make_server, 0, "--max-sessions", "1")
    client, _ = start_download(server.port)
    try:
        wait_for(lambda: len(children(helper)) == 1)
        os.kill(children(helper)[0], signal.SIGKILL)
        wait_for(server.events)
        assert [e["outcome"] for e in server.events()] == ["aborted"]
    finally:
        client.close()
    download_whole(server.port)  # the one session slot is free again


def test_a_download_in_a_worker_ends_when_its_client_has_gone(
    make_server: Callable[..., TFTPServer],
) -> None:
    """Its client's port closed: the block resent comes back as ICMP port unreachable,
    the worker ends the download at once (not after the 30-second idle timeout), and the
    session slot and the worker are free for the next one."""
    server, helper = start_with_spares(make_server, 0, "--max-sessions", "1")
    client, _ = start_download(server.port)  # DATA 1 read, never acknowledged
    wait_for(lambda: len(children(helper)) == 1)
    (worker,) = children(helper)
    client.close()
    wait_for(server.events, timeout=1.8)  # the first retransmission, after 1 s, ends it
    assert [(e["outcome"], int(e["bytes"])) for e in server.events()] == [("peer-gone", 0)]
    download_whole(server.port)
    wait_for(lambda: len(server.events()) == 2)
    assert children(helper) == [worker]


def test_a_helper_that_died_is_replaced_and_meanwhile_the_server_serves_downloads_itself(
    make_server: Callable[..., TFTPServer],
) -> None:
    server, helper = start_with_spares(make_server, 2)
    workers = children(helper)
    os.kill(helper, signal.SIGKILL)
    for pid in workers:  # idle workers without their helper exit: no orphans
        wait_for(functools.partial(gone, pid))
    download_whole(server.port)  # finds it gone: served here
    assert server.log().count("the download helper is gone") == 1
    wait_for(lambda: helper_of(server) not in (None, helper))
    replacement = helper_of(server)
    assert replacement is not None
    wait_for(lambda: len(children(replacement)) == 2 and all(map(ready, children(replacement))))
    download_whole(server.port)
    wait_for(lambda: len(server.events()) == 2)
    events = server.json_events()
    assert [e["outcome"] for e in events] == ["complete", "complete"]
    assert events[0]["process"] is None  # served by the server itself
    assert events[1]["process"] in children(replacement)  # by a spare of the new helper
    assert server.log().count("the download helper is gone") == 1


def test_a_helper_that_takes_no_downloads_is_replaced_and_its_downloads_go_on(
    make_server: Callable[..., TFTPServer],
) -> None:
    """A helper that stopped taking jobs (stopped here with SIGSTOP) is killed and
    replaced after HELPER_PATIENCE. The download it never took starts again, without
    its client asking again; the old helper's workers finish their downloads and report,
    and a stop of the server still reaches them."""
    server, helper = start_with_spares(make_server, 0)
    assert server.process is not None
    finishing, finishing_transfer = start_download(server.port)
    stopped, _ = start_download(server.port)
    lost = client_socket()
    try:
        wait_for(lambda: len(children(helper)) == 2)
        old_workers = children(helper)
        os.kill(helper, signal.SIGSTOP)
        asked_at = time.monotonic()
        lost.sendto(b"\x00\x01f\x00octet\x00", (HOST, server.port))
        wait_for(server.events, timeout=HELPER_PATIENCE + 3)
        assert time.monotonic() - asked_at > HELPER_PATIENCE - 0.2
        assert [e["outcome"] for e in server.events()] == ["aborted"]  # the job it never took
        assert "took none of 1 download(s) in 2.0 s" in server.log()
        lost_attempt = server.json_events()[0]
        assert lost_attempt["error_message"] == "its helper never took it: served again"
        assert gone(helper)
        datagram, transfer = lost.recvfrom(1024)  # served again, unasked
        assert datagram[:4] == b"\x00\x03\x00\x01"
        assert finish_download(lost, transfer) == FILE
        assert helper_of(server) not in (None, helper)
        assert finish_download(finishing, finishing_transfer) == FILE
        wait_for(lambda: len(server.events()) == 3)
        assert [e["outcome"] for e in server.events()][1:] == ["complete", "complete"]

        server.process.send_signal(signal.SIGTERM)
        while True:
            datagram = stopped.recv(1024)
            if datagram[:2] == b"\x00\x05":
                break
        assert datagram == b"\x00\x05\x00\x00server shutting down\x00"
        server.process.wait(timeout=10)
    finally:
        for sock in (finishing, stopped, lost):
            sock.close()
    assert server.events()[-1]["outcome"] == "local-error"
    for pid in old_workers:
        wait_for(functools.partial(gone, pid))


# -- handed-over downloads, seen from the wire and from the server's log -------------------


@pytest.fixture
def logged_server(tmp_path: Path) -> Iterator[tuple[TFTPServer, int]]:
    """A server handing downloads over (the default), its events also in JSON, with one
    spare worker ready; (the server, that worker's pid)."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(FILE)
    (root / "small").write_bytes(DATA)
    server = TFTPServer(
        root, tmp_path / "twistd.log", "--spare-workers", "1", json_log=tmp_path / "events.json"
    ).start()
    try:
        helper = helper_of(server)
        assert helper is not None
        wait_for(lambda: len(children(helper)) == 1 and all(map(ready, children(helper))))
        (worker,) = children(helper)
        yield server, worker
    finally:
        server.stop()


def logged(server: TFTPServer, count: int) -> list[dict[str, object]]:
    """The server's transfer events, once there are ``count`` (each is logged as its
    transfer ends, which may be a hair after the client is done)."""
    wait_for(lambda: len(server.json_events()) >= count)
    events = server.json_events()
    assert len(events) == count, events
    return events


def heard(client: socket.socket, seconds: float) -> list[bytes]:
    """Every datagram ``client`` receives within ``seconds``."""
    received = []
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            client.settimeout(left)
            received.append(client.recv(65536))
    except TimeoutError:
        pass
    finally:
        client.settimeout(5)
    return received


def request(name: str, **options: int) -> bytes:
    return RRQ(name, options=tuple((key, str(value)) for key, value in options.items())).encode()


def fetch(port: int, name: str, blksize: int) -> tuple[bytes, str]:
    """Download ``name`` at ``blksize`` (checking the OACK grants it); (the bytes, this
    client as the server logs its peer)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind((HOST, 0))
        client.settimeout(5)
        client.sendto(request(name, blksize=blksize), (HOST, port))
        datagram, transfer = client.recvfrom(65536)
        assert parse(datagram) == OACK((("blksize", str(blksize)),))
        client.sendto(ACK(0).encode(), transfer)
        received, block = b"", 0
        while True:
            packet = parse(client.recv(65536))
            if not (isinstance(packet, packets.DATA) and packet.block == block + 1):
                continue  # a retransmission (of the OACK or of a block we have)
            block, received = packet.block, received + packet.payload
            client.sendto(ACK(block).encode(), transfer)
            if len(packet.payload) < blksize:
                return received, "{}:{}".format(*client.getsockname())


def test_a_uefi_size_probe_is_a_normal_end_in_a_worker_too(
    logged_server: tuple[TFTPServer, int],
) -> None:
    # UEFI firmware asks for tsize (and a blksize), reads the size from the OACK and ends
    # with ERROR 8 before any data. 64 KiB at 1468 is 45 blocks: a worker sends the OACK.
    server, worker = logged_server
    image = bytes(range(256)) * 256
    (server.root / "bootx64.efi").write_bytes(image)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind((HOST, 0))
        client.settimeout(5)
        client.sendto(request("bootx64.efi", tsize=0, blksize=1468), (HOST, server.port))
        datagram, transfer = client.recvfrom(65536)
        oack = parse(datagram)
        assert isinstance(oack, OACK), oack
        assert dict(oack.options) == {"tsize": str(len(image)), "blksize": "1468"}
        client.sendto(ERROR(ErrorCode.OPTION_NEGOTIATION, "size probe").encode(), transfer)
        # No DATA, no OACK again (the first retransmission would come after 1 s), no ERROR.
        assert heard(client, 1.5) == []
    (event,) = logged(server, 1)
    assert event["filename"] == "bootx64.efi" and event["outcome"] == "size-probe", event
    assert event["error_code"] == ErrorCode.OPTION_NEGOTIATION and event["bytes"] == 0, event
    assert server.process is not None and event["process"] != server.process.pid
    assert event["process"] == worker, event  # reported by the worker that ran it


def test_a_stranger_gets_error_5_from_a_download_in_a_worker(
    logged_server: tuple[TFTPServer, int],
) -> None:
    server, worker = logged_server
    client, transfer = start_download(server.port)  # DATA 1 read, not acknowledged yet
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        stranger.bind((HOST, 0))
        stranger.settimeout(5)
        stranger.sendto(ACK(1).encode(), transfer)  # a forged ACK from elsewhere
        error, source = stranger.recvfrom(1024)
        reply = parse(error)
        assert isinstance(reply, ERROR) and reply.code == ErrorCode.UNKNOWN_TID, reply
        assert source == transfer
        # The download neither moved on for it nor ended: at most DATA 1 again.
        assert set(heard(client, 0.3)) <= {encode_data(1, FILE[:512])}
        assert finish_download(client, transfer) == FILE
    finally:
        client.close()
        stranger.close()
    (event,) = logged(server, 1)
    assert (event["outcome"], event["bytes"], event["process"]) == ("complete", len(FILE), worker)


def test_a_download_in_a_worker_is_logged_with_the_fields_of_one_served_here(
    logged_server: tuple[TFTPServer, int],
) -> None:
    # blksize 500: "f" is 36 blocks (handed over), "small" 3 (served by the server).
    server, worker = logged_server
    assert server.process is not None
    files = {"f": FILE, "small": DATA}
    peers = []
    for name, data in files.items():
        received, peer = fetch(server.port, name, 500)
        assert received == data
        peers.append(peer)
        logged(server, len(peers))  # one at a time: the events come in this order
    events = logged(server, 2)
    for event, (name, data), peer in zip(events, files.items(), peers, strict=True):
        assert event["peer"] == peer and event["filename"] == name, event
        assert event["direction"] == "read" and event["outcome"] == "complete", event
        assert event["options"] == {"blksize": "500"} and event["bytes"] == len(data), event
        retransmits, duration = event["retransmits"], event["duration"]
        assert type(retransmits) is int and retransmits >= 0, event
        assert isinstance(duration, float) and duration > 0, event
    handed, here = events
    assert handed["process"] == worker != server.process.pid
    assert here["process"] is None  # the server's own
    fields = [{key for key in event if not key.startswith("log_")} for event in events]
    assert fields[0] == fields[1]

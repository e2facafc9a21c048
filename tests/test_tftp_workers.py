"""The helper's pool of download processes (netsvc.tftp.workers): its bookkeeping, and the
helper program's life as the server starts and closes it."""

from __future__ import annotations

import mmap
import os
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from netsvc.tftp import downloader, workers
from netsvc.tftp.downloader import BOARD_SIZE, DownloadReport
from netsvc.tftp.engine import Outcome, TransferStats
from netsvc.tftp.handoff import DownloadHelper, can_hand_off
from tests.test_tftp_handoff import children, running, wait_for


@pytest.fixture
def pool() -> Iterator[workers._Pool]:
    control, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    board = mmap.mmap(-1, BOARD_SIZE)
    made = workers._Pool(control, board, spare=1)
    yield made
    for worker in list(made.workers.values()):
        made.forget(worker)
    control.close()
    server_end.close()


def fake_worker(pool: workers._Pool, idle_since: float) -> socket.socket:
    """A worker without a process: its end of the socket pair is returned."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    worker = workers._Worker(pid=0, sock=ours, idle_since=idle_since)
    pool.workers[ours] = worker
    pool.selector.register(ours, 1, worker)
    pool.idle.append(worker)
    return theirs


def assert_job_reaches(pool: workers._Pool, theirs: socket.socket) -> None:
    """Dispatch a job (one descriptor) and check that the fake worker ``theirs`` got it."""
    read_end, write_end = os.pipe()
    try:
        pool.dispatch(b"job", [write_end])
        message, fds, _, _ = socket.recv_fds(theirs, 100, 1)
        assert message == b"job" and len(fds) == 1
        for fd in fds:
            os.close(fd)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_idle_workers_beyond_the_spare_ones_retire_after_the_expiry(
    pool: workers._Pool,
) -> None:
    now = 1000.0
    oldest = fake_worker(pool, now - workers.IDLE_EXPIRY - 5)
    old = fake_worker(pool, now - workers.IDLE_EXPIRY - 1)
    recent = fake_worker(pool, now - 10)
    assert pool.retire_expired(now) is None  # nothing left to retire later
    # Both expired ones go; the spare kept is the most recently idle (its memory is warm).
    assert [worker.idle_since for worker in pool.idle] == [now - 10]
    for sock in (oldest, old):
        sock.settimeout(1)
        assert sock.recv(16) == b""  # its socket closed: that worker exits
    for sock in (oldest, old, recent):
        sock.close()


def test_retirement_waits_for_the_expiry(pool: workers._Pool) -> None:
    now = 1000.0
    first = fake_worker(pool, now - 30)
    second = fake_worker(pool, now - 20)
    wait = pool.retire_expired(now)
    assert len(pool.idle) == 2
    assert wait == pytest.approx(workers.IDLE_EXPIRY - 30)
    assert pool.retire_expired(now + workers.IDLE_EXPIRY - 30) is None
    assert len(pool.idle) == 1  # one is the spare
    for sock in (first, second):
        sock.close()


def test_a_worker_is_idle_when_it_says_so_and_gone_when_its_socket_closes(
    pool: workers._Pool,
) -> None:
    theirs = fake_worker(pool, 0.0)
    worker = pool.idle.pop()
    theirs.send(workers._IDLE)
    pool.heard_from(worker)
    assert pool.idle == [worker] and worker.idle_since > 0
    pool.idle.pop()
    theirs.close()
    pool.heard_from(worker)
    assert worker not in pool.idle and worker.sock not in pool.workers


def test_a_job_for_a_worker_that_died_while_idle_goes_to_the_next(
    pool: workers._Pool,
) -> None:
    alive = fake_worker(pool, 1.0)
    dead = fake_worker(pool, 2.0)  # the most recently idle: it is asked first
    dead.close()
    assert_job_reaches(pool, alive)
    assert pool.idle == [] and len(pool.workers) == 1
    alive.close()


def test_a_job_goes_to_a_busy_worker_whose_idle_word_waits_rather_than_to_a_fork(
    pool: workers._Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = fake_worker(pool, 1.0)
    worker = pool.idle.pop()  # busy: the helper has not heard it say otherwise
    theirs.send(workers._IDLE)  # ... though it has said so, in the same instant as the job came

    def no_fork(**_: object) -> workers._Worker:
        raise AssertionError("a worker was forked while one was idle")

    monkeypatch.setattr(pool, "start_worker", no_fork)
    assert_job_reaches(pool, theirs)
    assert pool.idle == [] and list(pool.workers.values()) == [worker]
    theirs.close()


def test_a_word_heard_while_dispatching_is_not_waited_for_again(
    pool: workers._Pool,
) -> None:
    # The helper's loop saw the job and two workers' idle words in one select; dispatching
    # the job heard both words first (hear_waiting_words) and gave the job to one. The loop
    # then comes to the other's stale readiness: it must not wait in recv for a word that
    # was taken (before the fix it did, and every later job queued behind it).
    first, second = fake_worker(pool, 1.0), fake_worker(pool, 2.0)
    both = list(pool.idle)
    pool.idle.clear()
    for theirs in (first, second):
        theirs.send(workers._IDLE)
    assert_job_reaches(pool, second)  # the most recently idle
    idle_worker = both[0]
    assert pool.idle == [idle_worker]

    def stuck(signum: int, frame: object) -> None:
        raise AssertionError("the helper waits for a word it has already heard")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(2)
    try:
        for worker in both:  # the stale readiness of the select before the dispatch
            pool.heard_from(worker)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert pool.idle == [idle_worker] and len(pool.workers) == 2
    for theirs in (first, second):
        theirs.close()


def test_a_worker_says_it_is_idle_before_its_report_reaches_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the server has a report (and has logged the download), the helper can hand
    the worker the client's next request: the word is waiting there already."""
    helper_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    report_read, report_write = os.pipe()
    report = DownloadReport(Outcome.COMPLETE, TransferStats(started=1.0, finished=2.0), pid=1)
    monkeypatch.setattr(downloader, "run_job", lambda *_: report)
    word_at_report: list[bytes] = []
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        if fd == report_write:
            word_at_report.append(helper_end.recv(16, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    try:
        board = mmap.mmap(-1, BOARD_SIZE)
        said = workers._run(None, -1, -1, report_write, board=board, helper=worker_end)  # type: ignore[arg-type]
        assert said and word_at_report == [workers._IDLE]
        assert DownloadReport.decode(os.read(report_read, 4096)) == report
        # Without a helper (a rehearsal) nothing is said: the caller says it.
        assert not workers._run(None, -1, -1, report_write, board=board)  # type: ignore[arg-type]
    finally:
        for sock in (helper_end, worker_end):
            sock.close()
        os.close(report_read)
        os.close(report_write)


@pytest.mark.skipif(not can_hand_off(), reason="no fork or fd passing on this platform")
def test_closing_the_helper_ends_its_spare_workers() -> None:
    helper = DownloadHelper(spare_workers=2)
    try:
        wait_for(lambda: len(children(helper.process.pid)) == 2)
        spares = children(helper.process.pid)
    finally:
        helper.close()
    assert helper.process.poll() is not None
    for pid in spares:
        wait_for(lambda pid=pid: not running(pid))


def test_the_helper_program_refuses_a_wrong_command_line() -> None:
    with pytest.raises(SystemExit, match="usage"):
        workers.main(["x"])
    with pytest.raises(SystemExit, match="usage"):
        workers.main(["1", "2", "3", "4"])


def test_a_rehearsal_is_a_whole_download_that_never_waits() -> None:
    board = mmap.mmap(-1, BOARD_SIZE)
    started = time.monotonic()
    assert workers.rehearse(board)  # the real path to a complete outcome
    assert time.monotonic() - started < 0.2  # the ACKs were queued: no timer ran


def test_a_spare_worker_rehearses_before_it_says_it_is_ready() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    notes_read, notes_write = os.pipe()
    board = mmap.mmap(-1, BOARD_SIZE)
    pid = os.fork()
    if pid == 0:  # the worker
        status = 1
        try:
            ours.close()
            original = workers.rehearse

            def noted(board: mmap.mmap) -> bool:
                done = original(board)
                os.write(notes_write, b"R" if done else b"F")
                return done

            workers.rehearse = noted  # type: ignore[assignment]
            workers._work(theirs, board, spare=True)
            status = 0
        finally:
            os._exit(status)
    theirs.close()
    os.close(notes_write)
    try:
        ours.settimeout(10)
        assert ours.recv(16) == b"i"  # ready...
        os.set_blocking(notes_read, False)
        assert os.read(notes_read, 1) == b"R"  # ...after a complete rehearsal
    finally:
        ours.close()  # the worker exits
        os.close(notes_read)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

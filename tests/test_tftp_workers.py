"""The helper's pool of download processes (netsvc.tftp.workers): its bookkeeping, and the
helper program's life as the server starts and closes it."""

from __future__ import annotations

import mmap
import os
import socket
import time
from collections.abc import Iterator

import pytest

from netsvc.tftp import workers
from netsvc.tftp.downloader import BOARD_SIZE
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
    read_end, write_end = os.pipe()
    try:
        pool.dispatch(b"job", [write_end])
        message, fds, _, _ = socket.recv_fds(alive, 100, 1)
        assert message == b"job" and len(fds) == 1
        for fd in fds:
            os.close(fd)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert pool.idle == [] and len(pool.workers) == 1
    alive.close()


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

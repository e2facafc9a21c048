"""The helper program: a pool of download processes, reused from one download to the next.

``python -m netsvc.tftp.workers CONTROL_FD BOARD_FD [SPARE]``, started by the server
(:class:`netsvc.tftp.handoff.DownloadHelper`); no Twisted. Each download the server hands
over (a :class:`~netsvc.tftp.downloader.DownloadJob` with the client's socket, the file
and the write end of a report pipe) goes to an idle worker, or to a new one when none is
idle. A worker runs it (:func:`~netsvc.tftp.downloader.run_job`), writes the report to the
pipe, closes its descriptors and waits for the next.

Why a pool: a process forked per download (tftpd-hpa's way) costs a Python program about
3 ms of CPU per download: the fork copies the page tables, every page the child writes to
is copied on its first write (reference counts are writes), and the exit tears it all
down again. A worker pays that once. ``SPARE`` workers are started before any client
comes, so that a burst of clients right after the start does not wait for forks (nor pay
their copy-on-write faults while it runs: a worker forked in a burst faulted twice as
many pages during it as one forked before). Workers beyond ``SPARE`` that stay idle for
:data:`IDLE_EXPIRY` seconds exit, so the pool shrinks back after a burst.

Ending: the server closing ``CONTROL_FD`` ends the helper; a worker whose helper is gone
exits after its download. SIGTERM to the group ends everything: a worker in a download
tells its client (ERROR 0) and reports first.
"""

from __future__ import annotations

import gc
import mmap
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence

import attrs

from netsvc.tftp import downloader
from netsvc.tftp.downloader import (
    BOARD_JOBS_TAKEN,
    BOARD_SIZE,
    MESSAGE_LIMIT,
    DownloadJob,
    DownloadReport,
    SenderSettings,
)
from netsvc.tftp.engine import Outcome
from netsvc.tftp.packets import OACK, encode_ack

__all__ = ["IDLE_EXPIRY", "rehearse", "serve_jobs"]

#: Descriptors that come with a job: client socket, file, report pipe.
JOB_FDS = 3
#: Seconds a worker beyond the spare ones may stay idle before it exits.
IDLE_EXPIRY = 60.0
_IDLE = b"i"  # a worker's word to the helper: ready for the next job


@attrs.define(eq=False)
class _Worker:
    pid: int
    sock: socket.socket  # the helper's end of the worker's socket pair
    idle_since: float = 0.0


class _Pool:
    """The helper's bookkeeping: which workers exist and which are idle."""

    def __init__(self, control: socket.socket, board: mmap.mmap, spare: int) -> None:
        self.control = control
        self.board = board
        self.spare = spare
        self.selector = selectors.DefaultSelector()
        self.idle: list[_Worker] = []  # the most recently idle last: its caches are warm
        self.workers: dict[socket.socket, _Worker] = {}

    def start_worker(self, *, spare: bool = False, job_fds: Sequence[int] = ()) -> _Worker:
        """Fork a worker. ``job_fds``: descriptors of a job the helper holds right now,
        which the worker must not keep (it gets its own copies with the job)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                ours.close()
                # The other workers' sockets and the helper's: a sibling holding them
                # would hide a worker's death from the helper. A job's report pipe kept
                # open here would never tell the server that the job ended.
                for sock in [self.control, *self.workers]:
                    sock.close()
                for fd in job_fds:
                    os.close(fd)
                self.selector.close()
                _work(theirs, self.board, spare)
                status = 0
            finally:
                os._exit(status)
        theirs.close()
        worker = _Worker(pid, ours)
        self.workers[ours] = worker
        self.selector.register(ours, selectors.EVENT_READ, worker)
        return worker

    def dispatch(self, message: bytes, fds: list[int]) -> None:
        """Give a job to an idle worker (a new one if none is). :raises OSError: no
        worker could be started (the report pipe closes empty: the server logs it)."""
        if not self.idle:
            self.hear_waiting_words()
        while self.idle:
            worker = self.idle.pop()
            try:
                socket.send_fds(worker.sock, [message], fds)
                return
            except OSError:  # it died while idle: the next one takes the job
                self.forget(worker)
        worker = self.start_worker(job_fds=fds)
        try:
            socket.send_fds(worker.sock, [message], fds)
        except OSError:
            self.forget(worker)
            raise

    def hear_waiting_words(self) -> None:
        """Take in what workers have said already. A worker says it is idle before its
        report goes to the server, so a client's next request can reach the helper
        together with that word; heard first, it spares a fork."""
        for key, _ in self.selector.select(0):
            if key.data is not None:
                self.heard_from(key.data)

    def heard_from(self, worker: _Worker) -> None:
        """Take in what ``worker`` said, if anything: the helper's loop may ask after
        :meth:`hear_waiting_words` has already taken its word (the readiness it acts on
        was seen before the job came), and a wait here would stall every job behind it."""
        try:
            word = worker.sock.recv(16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return  # nothing new: heard already
        except OSError:
            word = b""
        if word == _IDLE:
            worker.idle_since = time.monotonic()
            self.idle.append(worker)
        else:
            self.forget(worker)  # it exited or died

    def forget(self, worker: _Worker) -> None:
        if self.workers.pop(worker.sock, None) is not None:
            self.selector.unregister(worker.sock)
        if worker in self.idle:
            self.idle.remove(worker)
        worker.sock.close()

    def retire_expired(self, now: float) -> float | None:
        """Let idle workers beyond the spare ones go after :data:`IDLE_EXPIRY`; seconds
        until the next may go (``None``: none will)."""
        surplus = len(self.idle) - self.spare
        # The idle list is in order of idleness: the longest idle first.
        while surplus > 0 and now - self.idle[0].idle_since >= IDLE_EXPIRY:
            self.forget(self.idle[0])  # its socket closes: it exits
            surplus -= 1
        if surplus > 0:
            return self.idle[0].idle_since + IDLE_EXPIRY - now
        return None


def serve_jobs(control: socket.socket, board: mmap.mmap, spare: int = 0) -> None:
    """The helper's loop: hand jobs to workers until the server closes ``control``.

    ``board`` is the page the server shares (see :data:`~netsvc.tftp.downloader.BOARD_SIZE`);
    ``spare`` workers are started first and kept when idle.
    """
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the workers
    pool = _Pool(control, board, spare)
    for _ in range(spare):
        pool.start_worker(spare=True)  # idle once it says so
    pool.selector.register(control, selectors.EVENT_READ, None)
    timeout: float | None = None
    taken = 0
    while True:
        for key, _ in pool.selector.select(timeout):
            if key.data is not None:
                pool.heard_from(key.data)
                continue
            try:
                # Never a wait outside select: one stuck read would stall every job.
                message, fds, _, _ = socket.recv_fds(
                    control, MESSAGE_LIMIT, JOB_FDS, socket.MSG_DONTWAIT
                )
            except (InterruptedError, BlockingIOError):
                continue
            if not message:
                return  # the server is gone; the workers follow when their socket closes
            # The server's watchdog compares this count with the jobs it handed over.
            taken += 1
            board[BOARD_JOBS_TAKEN : BOARD_JOBS_TAKEN + 8] = taken.to_bytes(8, "little")
            try:
                if len(fds) == JOB_FDS:
                    pool.dispatch(message, fds)
            except OSError as error:  # no fork: the report pipe closes empty, the server logs it
                print(f"netsvc.tftp.workers: cannot start a worker: {error}", file=sys.stderr)
            finally:
                for fd in fds:
                    os.close(fd)
        timeout = pool.retire_expired(time.monotonic())


def _work(sock: socket.socket, board: mmap.mmap, spare: bool) -> None:
    """A worker's life: jobs from ``sock`` until the helper closes it or SIGTERM comes."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, _stop_between_jobs)
    if spare:  # ready after a rehearsal (a worker started for a job gets that job first)
        rehearse(board)
        if _stopping or not _tell_idle(sock):
            return
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, MESSAGE_LIMIT, JOB_FDS)
        except InterruptedError:
            continue
        except _Stopping:
            return
        if not message:
            return  # the helper is gone
        said_idle = False
        try:
            if len(fds) == JOB_FDS:
                said_idle = _run(DownloadJob.decode(message), *fds, board=board, helper=sock)
        except ValueError as error:
            print(f"netsvc.tftp.workers: ignored a bad job: {error}", file=sys.stderr)
        finally:
            for fd in fds:
                os.close(fd)
        if _stopping:
            return  # SIGTERM ended that download: the server stops
        if not said_idle and not _tell_idle(sock):
            return  # the helper is gone (replaced by the server): no more jobs come


def _tell_idle(helper: socket.socket) -> bool:
    """Tell the helper this worker is idle; whether it could (a helper the server killed
    for taking no jobs is gone, and the report must still reach the server)."""
    try:
        helper.send(_IDLE)
    except OSError:
        return False
    return True


def _run(
    job: DownloadJob,
    peer_fd: int,
    file_fd: int,
    report_fd: int,
    *,
    board: mmap.mmap,
    helper: socket.socket | None = None,
) -> bool:
    """Run a job and report it; whether ``helper`` (if given) was told this worker is
    idle."""
    signal.signal(signal.SIGTERM, _stop_in_download)
    try:
        report = downloader.run_job(job, peer_fd, file_fd, board)
        # Idle before the report: a client that asks again as soon as its download ends
        # (the server logs it when the report comes) then finds this warm worker idle,
        # not a fork. The job's descriptors are closed before the next job is read.
        said_idle = helper is not None and not _stopping and _tell_idle(helper)
        # Still under the download's handler, which only notes a SIGTERM from here on:
        # the between-jobs one would raise and lose the report.
        os.write(report_fd, report.encode())
        return said_idle
    finally:
        signal.signal(signal.SIGTERM, _stop_between_jobs)


#: The rehearsal's download (see :func:`rehearse`): three full blocks and a short one,
#: after an OACK, as most real ones have.
_REHEARSAL_BLKSIZE = 512
_REHEARSAL_SIZE = 3 * _REHEARSAL_BLKSIZE + 100
_REHEARSAL_OACK = OACK(
    (("blksize", str(_REHEARSAL_BLKSIZE)), ("tsize", str(_REHEARSAL_SIZE)))
).encode()


def rehearse(board: mmap.mmap) -> bool:
    """Serve one small download to a client inside this process, before the first real
    one; whether it completed.

    A worker shares the helper's memory until it writes to it, and a download writes to
    much of it (reference counts of the code and objects it uses): a fresh worker's first
    download took about 200 page faults, each copying a page, where a warm worker's took
    10-50, and a rehearsed worker's first about 45 (docs/benchmarks.rst, "Warm workers").
    A spare worker pays that here, before any client waits: the rehearsal runs the same
    path as a job, over loopback, with the client's ACKs already queued on its socket so
    that it never waits.
    """
    if not hasattr(os, "memfd_create"):
        return False
    try:
        server_end = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client_end = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return False
    file_fd = read_end = write_end = -1
    try:
        server_end.bind(("127.0.0.1", 0))
        client_end.bind(("127.0.0.1", 0))
        server_end.connect(client_end.getsockname())
        client_end.connect(server_end.getsockname())
        blocks = _REHEARSAL_SIZE // _REHEARSAL_BLKSIZE + 1
        for block in range(blocks + 1):  # ACK 0 answers the OACK
            client_end.send(encode_ack(block))
        file_fd = os.memfd_create("netsvc-tftp-rehearsal", getattr(os, "MFD_CLOEXEC", 0))
        os.write(file_fd, bytes(_REHEARSAL_SIZE))
        read_end, write_end = os.pipe()
        settings = SenderSettings(
            blksize=_REHEARSAL_BLKSIZE, windowsize=1, preamble=_REHEARSAL_OACK,
            initial_rto=0.05, min_rto=0.01, max_rto=0.05, give_up_after=0.2,
            first_contact_retries=1,
        )
        job = DownloadJob(settings, size=_REHEARSAL_SIZE, netascii=False, max_duration=0.5,
                          spin=True)
        _run(DownloadJob.decode(job.encode()), server_end.fileno(), file_fd, write_end,
             board=board)
        report = DownloadReport.decode(os.read(read_end, MESSAGE_LIMIT))
    except OSError:
        return False
    finally:
        server_end.close()
        client_end.close()
        for fd in (file_fd, read_end, write_end):
            if fd >= 0:
                os.close(fd)
    return report is not None and report.outcome is Outcome.COMPLETE


_stopping = False  # SIGTERM came: the worker exits after what it is doing


class _Stopping(BaseException):
    """SIGTERM while a worker waits for a job: it exits."""


def _stop_between_jobs(signum: int, frame: object) -> None:
    global _stopping
    _stopping = True
    raise _Stopping


def _stop_in_download(signum: int, frame: object) -> None:
    """SIGTERM during a download: it ends with ERROR 0 to the client (drive_download),
    reports, and the worker exits."""
    global _stopping
    _stopping = True
    downloader.stop_download(signum, frame)


def main(argv: list[str] | None = None) -> None:
    """``python -m netsvc.tftp.workers CONTROL_FD BOARD_FD [SPARE]``: serve jobs from the
    Unix socket ``CONTROL_FD`` with the server's shared page ``BOARD_FD``, keeping
    ``SPARE`` workers ready."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3) or not all(arg.isdigit() for arg in args):
        sys.exit(
            "usage: python -m netsvc.tftp.workers CONTROL_FD BOARD_FD [SPARE]"
            "  (started by the TFTP server)"
        )
    os.setpgid(0, 0)  # a group of its own, for its workers too: the server stops it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    gc.freeze()  # workers would otherwise copy pages when a collection touches them
    board = mmap.mmap(int(args[1]), BOARD_SIZE)  # the helper writes its count of jobs
    os.close(int(args[1]))
    spare = int(args[2]) if len(args) == 3 else 0
    with socket.socket(fileno=int(args[0])) as control:
        serve_jobs(control, board, spare)


if __name__ == "__main__":
    main()

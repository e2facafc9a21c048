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
down again. A worker pays that once. ``SPARE`` workers are started, and run one download
over loopback each, before any client comes, so that a burst of clients right after the
start finds warm processes too. Workers beyond ``SPARE`` that stay idle for
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
import threading
import time
from collections.abc import Sequence

import attrs

from netsvc.tftp import downloader
from netsvc.tftp.downloader import (
    BOARD_SIZE,
    MESSAGE_LIMIT,
    DownloadJob,
    DownloadReport,
    SenderSettings,
)

__all__ = ["IDLE_EXPIRY", "serve_jobs"]

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
        self.idle: list[_Worker] = []  # the most recently idle last: its memory is warm
        self.workers: dict[socket.socket, _Worker] = {}

    def start_worker(self, *, warm_up: bool = False, job_fds: Sequence[int] = ()) -> _Worker:
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
                _work(theirs, self.board, warm_up)
                status = 0
            finally:
                os._exit(status)
        theirs.close()
        worker = _Worker(pid, ours)
        self.workers[ours] = worker
        self.selector.register(ours, selectors.EVENT_READ, worker)
        return worker

    def dispatch(self, message: bytes, fds: list[int]) -> None:
        """Give a job to an idle worker (a new one if none is)."""
        worker = self.idle.pop() if self.idle else self.start_worker(job_fds=fds)
        try:
            socket.send_fds(worker.sock, [message], fds)
        except OSError:  # it died just now: the report pipe closes empty, the server logs it
            self.forget(worker)

    def heard_from(self, worker: _Worker) -> None:
        try:
            word = worker.sock.recv(16)
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
    ``spare`` workers are started (and warmed up) first and kept when idle.
    """
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the workers
    pool = _Pool(control, board, spare)
    for _ in range(spare):
        pool.start_worker(warm_up=True)  # idle once it says so, after its warm-up
    pool.selector.register(control, selectors.EVENT_READ, None)
    timeout: float | None = None
    while True:
        for key, _ in pool.selector.select(timeout):
            if key.data is not None:
                pool.heard_from(key.data)
                continue
            try:
                message, fds, _, _ = socket.recv_fds(control, MESSAGE_LIMIT, JOB_FDS)
            except InterruptedError:
                continue
            if not message:
                return  # the server is gone; the workers follow when their socket closes
            try:
                if len(fds) == JOB_FDS:
                    pool.dispatch(message, fds)
            except OSError as error:  # no fork: the report pipe closes empty, the server logs it
                print(f"netsvc.tftp.workers: cannot start a worker: {error}", file=sys.stderr)
            finally:
                for fd in fds:
                    os.close(fd)
        timeout = pool.retire_expired(time.monotonic())


def _work(sock: socket.socket, board: mmap.mmap, warm_up: bool) -> None:
    """A worker's life: jobs from ``sock`` until the helper closes it or SIGTERM comes."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, _stop_between_jobs)
    if warm_up:  # a spare worker: ready once warm (one started for a job gets it at once)
        try:
            _warm_up(board)
        except Exception as error:  # a colder first download, nothing worse
            print(f"netsvc.tftp.workers: warm-up failed: {error}", file=sys.stderr)
        sock.send(_IDLE)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, MESSAGE_LIMIT, JOB_FDS)
        except InterruptedError:
            continue
        except _Stopping:
            return
        if not message:
            return  # the helper is gone
        try:
            if len(fds) == JOB_FDS:
                _run(DownloadJob.decode(message), *fds, board=board)
        except ValueError as error:
            print(f"netsvc.tftp.workers: ignored a bad job: {error}", file=sys.stderr)
        finally:
            for fd in fds:
                os.close(fd)
        if _stopping:
            return  # SIGTERM ended that download: the server stops
        sock.send(_IDLE)


def _run(job: DownloadJob, peer_fd: int, file_fd: int, report_fd: int, *, board: mmap.mmap) -> None:
    global _stopping
    # During a download SIGTERM ends it with ERROR 0 to the client (drive_download).
    signal.signal(signal.SIGTERM, downloader.stop_download)
    try:
        report = downloader.run_job(job, peer_fd, file_fd, board)
    finally:
        signal.signal(signal.SIGTERM, _stop_between_jobs)
    if report.stats.error_message == downloader.SHUTDOWN_MESSAGE:
        _stopping = True
    os.write(report_fd, report.encode())


_stopping = False


class _Stopping(BaseException):
    """SIGTERM while a worker waits for a job: it exits."""


def _stop_between_jobs(signum: int, frame: object) -> None:
    global _stopping
    _stopping = True
    raise _Stopping


def _warm_up(board: mmap.mmap) -> DownloadReport | None:
    """Run one small download over loopback, client included, so that this process has
    touched (and copied) the memory a download uses before a real client waits on it.
    Its report (``None`` without ``memfd_create``)."""
    blksize, blocks = 512, 4
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, socket.socket(
        socket.AF_INET, socket.SOCK_DGRAM
    ) as client:
        server.bind(("127.0.0.1", 0))
        client.bind(("127.0.0.1", 0))
        server.connect(client.getsockname())
        client.connect(server.getsockname())
        client.settimeout(1.0)
        data_fd = os.memfd_create("netsvc-warm-up") if hasattr(os, "memfd_create") else None
        if data_fd is None:
            return None
        try:
            os.write(data_fd, bytes(blksize * blocks))
            os.lseek(data_fd, 0, os.SEEK_SET)
            job = DownloadJob(
                SenderSettings(blksize, 1, None, 0.05, 0.01, 0.05, 1.0, 3),
                size=blksize * blocks,
                netascii=False,
                max_duration=1.0,
            )
            acknowledger = threading.Thread(target=_acknowledge_all, args=(client,), daemon=True)
            acknowledger.start()
            report = downloader.run_job(job, server.fileno(), data_fd, board)
            acknowledger.join(1.0)
            return report
        finally:
            os.close(data_fd)


def _acknowledge_all(client: socket.socket) -> None:
    """The warm-up's client: acknowledge every block until a short one."""
    while True:
        try:
            datagram = client.recv(1024)
        except OSError:
            return
        client.send(b"\0\4" + datagram[2:4])
        if len(datagram) < 4 + 512:
            return


def main(argv: list[str] | None = None) -> None:
    """``python -m netsvc.tftp.workers CONTROL_FD BOARD_FD [SPARE]``: serve jobs from the
    Unix socket ``CONTROL_FD`` with the server's shared page ``BOARD_FD``, keeping
    ``SPARE`` warm workers."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3) or not all(arg.isdigit() for arg in args):
        sys.exit(
            "usage: python -m netsvc.tftp.workers CONTROL_FD BOARD_FD [SPARE]"
            "  (started by the TFTP server)"
        )
    os.setpgid(0, 0)  # a group of its own, for its workers too: the server stops it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    gc.freeze()  # workers would otherwise copy pages when a collection touches them
    board = mmap.mmap(int(args[1]), BOARD_SIZE, access=mmap.ACCESS_READ)
    os.close(int(args[1]))
    spare = int(args[2]) if len(args) == 3 else 0
    with socket.socket(fileno=int(args[0])) as control:
        serve_jobs(control, board, spare)


if __name__ == "__main__":
    main()

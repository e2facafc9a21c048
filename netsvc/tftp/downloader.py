"""Downloads in processes of their own: what the server sends, what runs there, what comes back.

Why: one process serving many lock-step downloads makes every client sleep and be woken
again for each block, and the clients' CPU adds up to more than the server's. A download
in a process of its own sleeps in ``recv`` on its own socket: the client's ACK wakes
exactly that process, on the client's CPU, which answers before the client has gone to
sleep (tftpd-hpa's architecture). Figures: docs/benchmarks.rst.

The server (:mod:`netsvc.tftp.handoff`) starts a small helper program without Twisted
(:mod:`netsvc.tftp.workers`) that keeps a pool of worker processes. For each download the
server sends a :class:`DownloadJob` with three descriptors: the socket connected to the
client, the open file, and the write end of a pipe. A worker runs the engine
(:func:`run_job`, :func:`drive_download`), writes a :class:`DownloadReport` to the pipe and
takes the next job.

Nothing here imports Twisted.
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import select
import socket
import struct
import time
from collections.abc import Callable

import attrs

from netsvc.spin import Spinner, useful_spinner
from netsvc.tftp import lockstep
from netsvc.tftp.blocking import ReadAhead
from netsvc.tftp.colocate import ClientCpu
from netsvc.tftp.engine import (
    BlockSender,
    LockstepPoint,
    Outcome,
    RetransmitTimer,
    TransferStats,
)
from netsvc.tftp.files import BackendError, FilesystemReader
from netsvc.tftp.packets import ErrorCode

__all__ = [
    "DownloadJob",
    "DownloadReport",
    "SenderSettings",
    "drive_download",
]

#: Bytes of the page the server shares with the helper and its workers: byte 0 is the
#: number of transfers the server runs (255: that many or more); at
#: :data:`BOARD_JOBS_TAKEN`, the helper's count of jobs it has taken.
BOARD_SIZE = 64
#: Offset of the helper's count of jobs taken (8 bytes, little-endian, written by the
#: helper alone): the server compares it with the jobs it handed over, to tell a helper
#: that has stopped taking them (:class:`netsvc.tftp.handoff.HelperWatchdog`).
BOARD_JOBS_TAKEN = 8
#: Largest job or report message (see ``_JOB`` and ``_REPORT``).
MESSAGE_LIMIT = 16384
#: The ERROR message of a transfer stopped by the server's time limit (wherever it runs).
TIME_LIMIT_MESSAGE = "transfer exceeded the server's time limit"
#: The ERROR message of a transfer ended because the server stops (wherever it runs).
SHUTDOWN_MESSAGE = "server shutting down"
#: The longest single wait in ``recv`` (the loop re-checks its deadlines after it).
_LONGEST_WAIT_MS = 60_000


@attrs.frozen
class SenderSettings:
    """Everything a download's engine is built from (negotiated options, timers, limits)."""

    blksize: int
    windowsize: int
    preamble: bytes | None  # the OACK, when options were granted
    initial_rto: float
    min_rto: float
    max_rto: float
    give_up_after: float
    first_contact_retries: int
    #: as low as real losses take the floor when ``min_rto`` is a learned one (``None``:
    #: ``min_rto``; see RetransmitTimer.lower_floor)
    lowest_rto: float | None = None

    def new_sender(
        self,
        send: Callable[[bytes], None],
        read: Callable[[int], bytes | None],
        now: float,
        send_many: Callable[[list[bytes]], object] | None = None,
    ) -> BlockSender:
        """The engine (it sends its first packet at once)."""
        return BlockSender(
            send,
            read,
            now=now,
            send_many=send_many,
            blksize=self.blksize,
            windowsize=self.windowsize,
            timer=RetransmitTimer(self.initial_rto, self.min_rto, self.max_rto, self.lowest_rto),
            preamble=self.preamble,
            give_up_after=self.give_up_after,
            first_contact_retries=self.first_contact_retries,
        )


@attrs.frozen
class DownloadJob:
    """A download handed to the helper: the engine's settings and the file's particulars."""

    sender: SenderSettings
    size: int  # bytes to send from the file (its size when the server opened it)
    netascii: bool
    max_duration: float | None  # seconds left of the server's time limit
    spin: bool = False  # whether waits may poll awake first (see drive_download)
    #: whether to move to the client's CPU (a client on this host: netsvc.tftp.colocate)
    follow_client_cpu: bool = False

    def encode(self) -> bytes:
        settings = self.sender
        preamble = settings.preamble
        return (
            _JOB.pack(
                _JOB_TAG,
                settings.blksize,
                settings.windowsize,
                settings.initial_rto,
                settings.min_rto,
                settings.max_rto,
                settings.give_up_after,
                settings.first_contact_retries,
                _float_or_nan(settings.lowest_rto),
                self.size,
                self.netascii,
                _float_or_nan(self.max_duration),
                self.spin,
                self.follow_client_cpu,
                preamble is not None,
            )
            + (preamble or b"")
        )

    @classmethod
    def decode(cls, data: bytes) -> DownloadJob:
        """:raises ValueError: not a job."""
        try:
            (tag, blksize, windowsize, initial_rto, min_rto, max_rto, give_up_after,
             retries, lowest_rto, size, netascii, max_duration, spin, follow_client_cpu,
             has_preamble) = _JOB.unpack_from(data)
        except struct.error as error:
            raise ValueError(f"not a download job: {error}") from None
        preamble = data[_JOB.size :]
        if tag != _JOB_TAG or (preamble and not has_preamble):
            raise ValueError("not a download job")
        settings = SenderSettings(
            blksize=blksize,
            windowsize=windowsize,
            preamble=preamble if has_preamble else None,
            initial_rto=initial_rto,
            min_rto=min_rto,
            max_rto=max_rto,
            give_up_after=give_up_after,
            first_contact_retries=retries,
            lowest_rto=_none_if_nan(lowest_rto),
        )
        return cls(
            sender=settings,
            size=size,
            netascii=netascii,
            max_duration=_none_if_nan(max_duration),
            spin=spin,
            follow_client_cpu=follow_client_cpu,
        )


@attrs.frozen
class DownloadReport:
    """How a download in a worker process ended: its engine's outcome and counters."""

    outcome: Outcome
    stats: TransferStats
    pid: int
    #: the retransmission timer's floor at the end (seconds): what the download learned
    #: of its client's delays (netsvc.tftp.floors)
    timer_floor: float = 0.0

    def encode(self) -> bytes:
        stats = self.stats
        code = stats.error_code
        return _REPORT.pack(
            _REPORT_TAG,
            _OUTCOMES.index(self.outcome),
            self.pid,
            stats.started,
            _float_or_nan(stats.finished),
            stats.blocks,
            stats.bytes,
            stats.retransmits,
            stats.timeouts,
            -1 if code is None else code,
            self.timer_floor,
        ) + stats.error_message.encode("utf-8", "replace")

    @classmethod
    def decode(cls, data: bytes) -> DownloadReport | None:
        """The report in ``data``, or ``None`` for anything else (a worker that died)."""
        try:
            (tag, outcome, pid, started, finished, blocks, size, retransmits, timeouts,
             code, timer_floor) = _REPORT.unpack_from(data)
            message = data[_REPORT.size :].decode("utf-8", "replace")
        except struct.error:
            return None
        if tag != _REPORT_TAG or outcome >= len(_OUTCOMES):
            return None
        stats = TransferStats(
            started=started,
            finished=_none_if_nan(finished),
            blocks=blocks,
            bytes=size,
            retransmits=retransmits,
            timeouts=timeouts,
            error_code=None if code < 0 else code,
            error_message=message,
        )
        return cls(_OUTCOMES[outcome], stats, pid, timer_floor)


# Jobs and reports are fixed binary records (a tag, then the fields; a job's OACK and a
# report's error message follow as raw bytes): the server builds one job and reads one
# report per download, and JSON with attrs.asdict was about 5 % of its work per request.
_JOB_TAG = b"TFJ3"
_JOB = struct.Struct("=4sIIddddidQ?d???")
_REPORT_TAG = b"TFR2"
_REPORT = struct.Struct("=4sBidd4Qid")
_OUTCOMES = tuple(Outcome)


def _float_or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


#: Runs the lock-step steady state in place of :func:`drive_download`'s loop (see
#: :mod:`netsvc.tftp.lockstep`): why it stopped, and the datagram the engine must still
#: see (or ``None``).
SteadyState = Callable[[BlockSender, LockstepPoint, float], tuple[lockstep.Reason, bytes | None]]


class _Stopped(BaseException):
    """Raised by SIGTERM in a process running a download: the server is stopping."""


# SIGTERM ends a download only inside drive_download's loop, where it is caught and told
# to the client. Before the loop (the engine's first send) it is remembered and acted on
# when the loop starts; after it, the download is over and its report must still go out.
_stop_requested = False
_interruptible = False


def stop_download(signum: int, frame: object) -> None:
    """The SIGTERM handler of a process running :func:`drive_download`: the download
    ends with ERROR 0 (the server stops)."""
    global _stop_requested
    _stop_requested = True
    if _interruptible:
        raise _Stopped


def drive_download(
    job: DownloadJob,
    peer_socket: socket.socket,
    read: Callable[[int], bytes],
    *,
    spinner: Spinner | None = None,
    alone: Callable[[], bool] = lambda: True,
    clock: Callable[[], float] = time.monotonic,
    steady: SteadyState | None = None,
    client_cpu: ClientCpu | None = None,
) -> BlockSender:
    """Run a download to its end on ``peer_socket`` (connected to the client), blocking.

    ``read(n)`` is the file (synchronous); a read that fails ends the download with an
    ERROR to the client, as in the server's reactor. Only the client's datagrams reach a
    connected socket. While ``alone()`` says no other transfer runs, each wait first polls
    awake for the ``spinner``'s budget (a fast client's ACK is there within microseconds);
    then it sleeps in ``recv`` until the engine's deadline (``SO_RCVTIMEO``). SIGTERM
    (the server stopping) ends it with ERROR 0. ``steady``, when given, runs the
    lock-step steady state instead of this loop (:mod:`netsvc.tftp.lockstep`).
    ``client_cpu``: the moves to the client's CPU, for the datagrams this loop receives
    (:mod:`netsvc.tftp.colocate`). Returns the finished engine.
    """
    read_failure: list[tuple[int, str]] = []

    def read_block(size: int) -> bytes | None:
        try:
            return read(size)
        except BackendError as error:
            read_failure.append((error.code, error.message))
        except OSError as error:
            read_failure.append((ErrorCode.NOT_DEFINED, f"read error: {error.strerror}"))
        return None  # the engine waits for data that never comes: aborted below

    peer_socket.setblocking(True)
    socket_send = peer_socket.send
    # The client's port is closed (ICMP port unreachable, as ECONNREFUSED): it has gone.
    # Noted here, told to the engine by the loop (never from inside the engine's send).
    refused: list[bool] = []

    def send(datagram: bytes) -> None:
        try:
            socket_send(datagram)
        except ConnectionRefusedError:
            refused.append(True)
        except OSError:
            pass  # ENOBUFS...: a lost packet; the timers recover

    recv = peer_socket.recv

    def poll() -> bytes | None:
        try:
            return recv(1024, socket.MSG_DONTWAIT)
        except ConnectionRefusedError:
            refused.append(True)
        except OSError:
            pass  # nothing yet (EAGAIN)
        return None

    # A window in one system call (sendmmsg) rather than one per block.
    send_many: Callable[[list[bytes]], object] | None = None
    if lockstep.send_all is not None and job.sender.windowsize > 1:
        send_all = functools.partial(lockstep.send_all, peer_socket.fileno())

        def send_many(datagrams: list[bytes]) -> None:
            try:
                send_all(datagrams)
            except ConnectionRefusedError:
                refused.append(True)
    engine = job.sender.new_sender(send, read_block, clock(), send_many)
    stop_at = math.inf if job.max_duration is None else clock() + job.max_duration
    setsockopt = peer_socket.setsockopt
    waiting_ms = 0
    precise: select.poll | None = None
    global _interruptible, _stop_requested
    try:
        _interruptible = True
        if _stop_requested:
            raise _Stopped  # it came while the download was being set up
        while engine.outcome is None:
            now = clock()
            if refused:
                engine.peer_unreachable(now)
                break
            if read_failure:
                engine.abort(*read_failure[0], now)
                break
            if now >= stop_at:
                engine.abort(ErrorCode.NOT_DEFINED, TIME_LIMIT_MESSAGE, now)
                break
            deadline = engine.deadline
            wake = stop_at if deadline is None or deadline > stop_at else deadline
            if wake <= now:
                engine.on_timeout(now)
                continue
            if steady is not None:
                point = engine.lockstep_point()
                if point is not None:
                    reason, datagram = steady(engine, point, stop_at)
                    waiting_ms = 0  # the socket's timeout is whatever the pump left
                    if reason is lockstep.Reason.REFUSED:
                        refused.append(True)
                    elif datagram is not None:
                        engine.on_datagram(datagram, clock())
                    continue
            datagram = None
            if spinner is not None and alone():
                datagram = spinner.spin(poll, wake - now)
                if refused:
                    continue  # seen while polling: no sleep before the engine hears it
            if datagram is None and engine.losses_seen:
                # Blocks get lost on this path: wait in poll, which wakes on time (see
                # lockstep.PumpState.precise_wait).
                if precise is None:
                    precise = select.poll()
                    precise.register(peer_socket, select.POLLIN)
                if not precise.poll(min(math.ceil((wake - now) * 1000), _LONGEST_WAIT_MS)):
                    continue
                datagram = poll()
                if datagram is None:
                    continue  # an ICMP error (see refused), or nothing after all
            elif datagram is None:
                # Sleep until the deadline, in whole milliseconds (the kernel's unit):
                # waking earlier and again costs more under load than one setsockopt
                # when the timer has moved.
                milliseconds = min(math.ceil((wake - now) * 1000), _LONGEST_WAIT_MS)
                if milliseconds != waiting_ms:
                    waiting_ms = milliseconds
                    seconds, rest = divmod(milliseconds, 1000)
                    setsockopt(
                        socket.SOL_SOCKET,
                        socket.SO_RCVTIMEO,
                        struct.pack("ll", seconds, rest * 1000),
                    )
                try:
                    datagram = recv(1024)
                except ConnectionRefusedError:
                    refused.append(True)
                    continue
                except OSError:
                    continue  # the wait ended (EAGAIN): the timers decide
            if client_cpu is not None and client_cpu.wanted:
                client_cpu.after_receive(peer_socket, alone())
            engine.on_datagram(datagram, clock())
    except _Stopped:
        _interruptible = _stop_requested = False
        engine.abort(ErrorCode.NOT_DEFINED, SHUTDOWN_MESSAGE, clock())
    finally:
        _interruptible = False
    return engine


def run_job(job: DownloadJob, peer_fd: int, file_fd: int, board: mmap.mmap) -> DownloadReport:
    """A worker's work: serve the file, say how it ended. The descriptors stay open (the
    caller's to close)."""
    source = ReadAhead(FilesystemReader(file_fd, job.size), netascii=job.netascii)
    spinner = useful_spinner() if job.spin else None
    client_cpu = ClientCpu(job.follow_client_cpu)
    steady = None
    if lockstep.available and not job.netascii:

        def steady(
            engine: BlockSender, point: LockstepPoint, stop_at: float
        ) -> tuple[lockstep.Reason, bytes | None]:
            return lockstep.pump(
                engine,
                point,
                sock=peer_fd,
                file=file_fd,
                source=source,
                spinner=spinner,
                board=board,
                stop_at=stop_at,
                client_cpu=client_cpu,
            )

    with socket.socket(fileno=os.dup(peer_fd)) as peer_socket:
        engine = drive_download(
            job,
            peer_socket,
            source.read,
            spinner=spinner,
            alone=lambda: board[0] <= 1,
            steady=steady,
            client_cpu=client_cpu,
        )
    return DownloadReport(
        engine.outcome or Outcome.LOCAL_ERROR, engine.stats, os.getpid(), engine.timer.minimum
    )

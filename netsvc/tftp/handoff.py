"""The server's side of downloads in processes of their own (see :mod:`netsvc.tftp.downloader`).

:class:`DownloadHelper` starts the helper program, hands it downloads, and stops it and
its workers. :class:`HelperWatchdog` tells when a helper has stopped taking downloads.
:class:`ReportPipe` reads one download's report when its worker is done.
"""

from __future__ import annotations

import mmap
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import suppress
from enum import Enum
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.main import CONNECTION_DONE
from twisted.python.failure import Failure

from netsvc.tftp.downloader import (
    BOARD_JOBS_TAKEN,
    BOARD_SIZE,
    MESSAGE_LIMIT,
    DownloadJob,
    DownloadReport,
)

__all__ = [
    "HELPER_PATIENCE",
    "HELPER_RESTART_INTERVAL",
    "DownloadHelper",
    "HelperState",
    "HelperWatchdog",
    "JobProgress",
    "ReportPipe",
    "can_hand_off",
]

#: Seconds a helper may leave handed-over downloads untaken, taking none meanwhile,
#: before the server replaces it. Taking a job costs it well under a millisecond (a
#: fork, when no worker is idle, a few), so this is never a busy helper.
HELPER_PATIENCE = 2.0
#: Least seconds between two replacements of a helper (stuck or dead): one that fails at
#: once is not restarted in a loop (a start costs a Python process, about 0.1 s of CPU).
HELPER_RESTART_INTERVAL = 5.0


def can_hand_off() -> bool:
    """Whether this platform can run downloads in processes of their own."""
    return (
        hasattr(os, "fork")
        and hasattr(socket, "send_fds")
        and hasattr(socket, "SO_RCVTIMEO")
        and hasattr(os, "killpg")
    )


class DownloadHelper:
    """The helper process (``python -m netsvc.tftp.workers``) and its Unix socket;
    ``spare_workers`` download processes are kept ready (see :mod:`netsvc.tftp.workers`).

    The helper makes itself a process group that its downloads share: a stop reaches
    them all with one signal, and a terminal's Ctrl-C (sent to the server's group) none
    of them. They stay in the server's session.
    """

    def __init__(self, spare_workers: int = 0) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        board_fd = _shared_page()
        try:
            self._board = mmap.mmap(board_fd, BOARD_SIZE)
            fds = [theirs.fileno(), board_fd]
            self.process = subprocess.Popen(
                [sys.executable, "-m", "netsvc.tftp.workers", *map(str, fds), str(spare_workers)],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            os.close(board_fd)
        ours.setblocking(False)  # a full socket means "serve it here", never a wait
        self._control: socket.socket | None = ours
        self.jobs = JobProgress(self._board)
        #: Why the helper could not be reached (it died), once :meth:`hand_over` found it.
        self.gone: str | None = None

    def publish_load(self, transfers: int) -> None:
        """Tell the running downloads how many transfers the server has: they poll awake
        for ACKs only while they are alone (with company, polling takes CPU the other
        clients need)."""
        self._board[0] = min(transfers, 255)

    def hand_over(self, job: DownloadJob, peer_socket: socket.socket, file_fd: int) -> int | None:
        """Give a download to the helper; the read end of its report pipe, or ``None``
        when the helper cannot take it (the caller serves the download itself)."""
        control = self._control
        if control is None:
            return None
        message = job.encode()
        if len(message) > MESSAGE_LIMIT:
            return None
        read_end, write_end = os.pipe()
        try:
            socket.send_fds(control, [message], [peer_socket.fileno(), file_fd, write_end])
        except BlockingIOError:
            os.close(read_end)
            return None
        except OSError as error:
            os.close(read_end)
            self.gone = error.strerror or str(error)
            self._forget()
            return None
        finally:
            os.close(write_end)
        self.jobs.handed += 1
        self.jobs.running += 1
        return read_end

    def abandon(self) -> None:
        """Kill the helper process alone and hand it nothing more. Its workers finish
        their downloads, report and exit; the jobs it had not taken are lost with its
        socket (their report pipes close empty: see :meth:`JobProgress.never_taken`)."""
        if self.process.returncode is None:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(self.process.pid, signal.SIGKILL)
        self.close()

    def stop(self) -> None:
        """End the helper and every download it runs: each tells its client (ERROR 0)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """End them all at once (a stop that waited too long)."""
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        # The group outlives an abandoned helper while its workers run: its number is
        # not reused until they have all exited.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)
        if self.process.returncode is None:  # reaped: the pid may be someone else's
            with suppress(ProcessLookupError, PermissionError):
                os.kill(self.process.pid, signum)  # in case it has not made its group yet

    def close(self) -> None:
        """Stop taking downloads: the helper exits; the downloads it runs go on."""
        self._forget()
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1.0)

    def _forget(self) -> None:
        control, self._control = self._control, None
        if control is not None:
            control.close()


class HelperState(Enum):
    """What :meth:`JobProgress.check` found."""

    IDLE = "idle"  # every job handed over has been taken
    WAITING = "waiting"  # some wait, and it took some since the last check (or none waited)
    STUCK = "stuck"  # jobs waited at the last check and still do; it took none since


class JobProgress:
    """A helper's jobs: those handed over (counted here) against those it has taken
    (counted by the helper at :data:`~netsvc.tftp.downloader.BOARD_JOBS_TAKEN` of
    ``board``, the page it shares with the server)."""

    def __init__(self, board: mmap.mmap) -> None:
        self._board = board
        #: Jobs handed over; of those, the ones whose report pipe is still open.
        self.handed = 0
        self.running = 0
        #: Once the helper is replaced: how many it had taken. Jobs are taken in the
        #: order they were handed over (one socket), so the later ones never started.
        self.taken_at_end: int | None = None
        self._checked = (0, 0)  # (handed, taken) at the last check()

    def taken(self) -> int:
        return int.from_bytes(self._board[BOARD_JOBS_TAKEN : BOARD_JOBS_TAKEN + 8], "little")

    def waiting(self) -> int:
        return self.handed - self.taken()

    def never_taken(self, index: int) -> bool:
        """Whether job number ``index`` (0: the first handed over) was lost untaken with a
        helper that has been replaced: its client has heard nothing yet."""
        return self.taken_at_end is not None and index >= self.taken_at_end

    def check(self) -> HelperState:
        """Compare with the previous call: :attr:`HelperState.STUCK` when jobs that
        waited then wait still and the helper has taken none since."""
        taken = self.taken()
        handed_then, taken_then = self._checked
        self._checked = (self.handed, taken)
        if taken == taken_then and handed_then > taken:
            return HelperState.STUCK
        return HelperState.WAITING if self.handed > taken else HelperState.IDLE


class HelperWatchdog:
    """Checks a helper's :class:`JobProgress` every :data:`HELPER_PATIENCE` seconds
    while jobs handed to it wait, and calls ``on_stuck(jobs)`` when it has taken none of
    them meanwhile.

    Without it, a helper that stopped taking jobs (a bug, a stopped process) would leave
    every later download waiting until its time limit, hours by default; the server
    replaces it and starts the downloads it never took again. Costs nothing per download
    but a comparison: the helper counts the jobs it takes on the shared page.
    """

    def __init__(
        self,
        reactor: Any,
        on_stuck: Callable[[JobProgress], object],
        patience: float = HELPER_PATIENCE,
    ) -> None:
        self._reactor = reactor
        self._on_stuck = on_stuck
        self.patience = patience
        self._call: IDelayedCall | None = None

    def handed_over(self, jobs: JobProgress) -> None:
        """A job went to the helper of ``jobs``: check it after :attr:`patience` unless
        a check is due."""
        if self._call is None:
            jobs.check()  # from here: jobs that wait now must be taken by then
            self._call = self._reactor.callLater(self.patience, self._check, jobs)

    def cancel(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _check(self, jobs: JobProgress) -> None:
        self._call = None
        state = jobs.check()
        if state is HelperState.STUCK:
            self._on_stuck(jobs)
        elif state is HelperState.WAITING:
            self._call = self._reactor.callLater(self.patience, self._check, jobs)


class ReportPipe:
    """Reads one download's report; ``done(report)`` once its worker has closed the pipe,
    after the report or by dying (``None``: it ended without one, killed or crashed).

    An ``IReadDescriptor`` for the reactor.
    """

    def __init__(
        self, reactor: Any, fd: int, done: Callable[[DownloadReport | None], object]
    ) -> None:
        self._fd = fd
        self._data = b""
        self._done = done
        os.set_blocking(fd, False)
        reactor.addReader(self)

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "tftp-download-process"

    def doRead(self) -> object:
        try:
            chunk = os.read(self._fd, MESSAGE_LIMIT)
        except BlockingIOError:
            return None
        if not chunk or len(self._data) + len(chunk) > MESSAGE_LIMIT:
            return CONNECTION_DONE  # the reactor stops reading and calls connectionLost
        self._data += chunk
        return None

    def connectionLost(self, reason: Failure) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        self._done(DownloadReport.decode(self._data))


def _shared_page() -> int:
    """A descriptor of ``BOARD_SIZE`` zeroed bytes that processes can map and share."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("netsvc-tftp-load", getattr(os, "MFD_CLOEXEC", 0))
    else:  # pragma: no cover - not Linux
        with tempfile.TemporaryFile() as file:
            fd = os.dup(file.fileno())
    os.ftruncate(fd, BOARD_SIZE)
    return fd

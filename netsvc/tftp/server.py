"""TFTP server: a thin Twisted adapter over the sans-I/O engine and a storage backend.

The listener (:class:`TFTPServer`) only parses requests and decides whether to start a
transfer: it stays silent on junk, rate-limits each source, caps sessions, and never
answers one datagram with more than one packet. Each transfer (:class:`Transfer`) gets
its own ephemeral socket (its TID), translates datagrams and one timer into engine
events, and connects the engine to the backend's reader or writer. One structured log
event is emitted per transfer; nothing is logged per packet.
"""

from __future__ import annotations

import os
import random
from contextlib import suppress
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from netsvc.addr import plain_host
from netsvc.destination import Destination
from netsvc.echo import is_unanswerable_source
from netsvc.listening import ListenGroup, UDPListenService, add_child
from netsvc.ratelimit import NEVER, HeldBackSources, PerKeyRateLimiter
from netsvc.tftp.backend import BackendError, FilesystemBackend, IBackend, RequestContext
from netsvc.tftp.colocate import is_on_this_host
from netsvc.tftp.downloader import (
    SHUTDOWN_MESSAGE,
    TIME_LIMIT_MESSAGE,
    DownloadJob,
    DownloadReport,
    SenderSettings,
)
from netsvc.tftp.engine import (
    BlockReceiver,
    BlockSender,
    Outcome,
    RetransmitTimer,
    TransferStats,
    encode_error,
)
from netsvc.tftp.files import FilesystemReader
from netsvc.tftp.floors import LearnedFloors
from netsvc.tftp.handoff import (
    HELPER_RESTART_INTERVAL,
    DownloadHelper,
    HelperWatchdog,
    JobProgress,
    ReportPipe,
    can_hand_off,
)
from netsvc.tftp.options import Negotiated, OptionNegotiationError, ServerOptionPolicy, negotiate
from netsvc.tftp.packets import (
    OACK,
    RRQ,
    WRQ,
    ErrorCode,
    Mode,
    Request,
    TFTPProtocolError,
    encode_ack,
    parse,
)
from netsvc.tftp.session import EngineSession
from netsvc.tftp.textmode import NetasciiReader, NetasciiWriter
from netsvc.udpport import listen_udp_quietly, listen_udp_with_destinations
from netsvc.udptools import format_address

__all__ = [
    "SMALL_DOWNLOAD_BLOCKS",
    "SPARE_WORKERS",
    "TFTP_PORT",
    "StaleUploadCleanup",
    "TFTPServer",
    "TFTPServerLimits",
    "Transfer",
    "tftp_service",
]

TFTP_PORT = 69
DEFAULT_POLICY = ServerOptionPolicy()
#: Download processes a server started by twistd keeps ready (``--spare-workers``): about
#: 2.2 MB each when idle (docs/tftp-server.rst).
SPARE_WORKERS = 32
#: Downloads of at most this many blocks stay in the server process even when downloads
#: run in processes of their own: handing one over (helper, worker, report pipe) costs
#: about 0.5 ms of CPU, more than serving a few dozen blocks here (docs/tftp-server.rst).
SMALL_DOWNLOAD_BLOCKS = 32
#: Seconds a stopping server waits for downloads in processes of their own to end.
STOP_GRACE = 5.0
#: Seconds after a transfer's start within which the same request from the same client
#: address and port is its repeat even after the client was heard from (a duplicate the
#: network delayed); later, it is a new client that has the port (Transfer.is_repeat).
REPEAT_WINDOW = 1.0
#: How a transfer ends whose client address and port sent a new request (peer-gone).
SUPERSEDED_MESSAGE = "its client's address and port sent a new request"
#: The ERROR message to a request the server has no room for (sessions, ports).
BUSY_MESSAGE = "server busy, try again later"
#: The ERROR message to a client whose file the backend did not open within the idle
#: timeout (``TFTPServerLimits.idle_timeout``).
BACKEND_TIMEOUT_MESSAGE = "the server could not open the file in time"


@attrs.frozen
class TFTPServerLimits:
    """Guards and timers of a TFTP server. ``None`` switches a limit off."""

    #: Transfers running at once; further requests get ERROR 0 "server busy".
    max_sessions: int | None = 1000
    #: Transfers running at once for one client address.
    max_sessions_per_client: int | None = 128
    #: Requests accepted per second from one source address (and the burst above it).
    request_rate: float | None = 50.0
    request_burst: float = 100.0
    #: A transfer that makes no progress for this long ends (idle timeout).
    idle_timeout: float = 30.0
    #: A transfer that runs longer than this ends, whatever its progress.
    max_duration: float | None = 6 * 3600.0
    #: Retransmissions before the client has answered once (it may be a spoofed address).
    first_contact_retries: int = 4
    #: After the final ACK of an upload, stay this long to re-ACK a retransmitted last
    #: block (if that ACK is lost, the client can only learn of success this way): long
    #: enough for a few of the client's retransmissions.
    dally: float = 5.0
    #: Retransmission timer: initial value, floor and ceiling (seconds).
    initial_rto: float = 1.0
    min_rto: float = 0.005
    max_rto: float = 2.0
    #: Ephemeral ports for transfers (inclusive range), or ``None`` for any.
    port_range: tuple[int, int] | None = None

    def timer_for(
        self, timeout_option: int | None, learned_floor: float | None = None
    ) -> RetransmitTimer:
        """A retransmission timer for one transfer.

        A negotiated ``timeout`` option (RFC 2349) is the client's retransmission interval:
        ours adapts below it, from measured round trips, but never waits longer.
        ``learned_floor``: a floor earlier downloads learned for this client's host
        (:mod:`netsvc.tftp.floors`), used where it is above ``min_rto``; real losses may
        take it back down to ``min_rto`` (the timer's ``lowest``).
        """
        maximum = self.max_rto
        if timeout_option is not None:
            maximum = min(maximum, float(timeout_option))
        minimum = self.min_rto if learned_floor is None else max(self.min_rto, learned_floor)
        return RetransmitTimer(
            initial=min(self.initial_rto, maximum),
            minimum=min(minimum, maximum),
            maximum=maximum,
            lowest=min(self.min_rto, maximum),
        )

    def __attrs_post_init__(self) -> None:
        if self.port_range is not None:
            low, high = self.port_range
            if not 1 <= low <= high <= 65535:
                raise ValueError(f"bad port range {low}-{high}")
        if not 0 < self.min_rto <= self.max_rto:
            raise ValueError("need 0 < min_rto <= max_rto")


def _cancel(timer: IDelayedCall | None) -> None:
    if timer is not None and timer.active():
        timer.cancel()


#: Interfaces meaning every local address.
_UNSPECIFIED = frozenset({"", "0.0.0.0", "::"})


def _peer_key(addr: Any) -> tuple[str, int]:
    return (addr[0], addr[1])


def _looks_like_request(datagram: bytes) -> bool:
    """An RRQ or WRQ by its opcode (the parser judges the rest)."""
    return len(datagram) >= 4 and datagram[0] == 0 and datagram[1] in (1, 2)


class TFTPServer(DatagramProtocol):
    """The listening socket: validates requests and starts :class:`Transfer` sessions."""

    noisy = False
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        backend: IBackend,
        *,
        policy: ServerOptionPolicy = DEFAULT_POLICY,
        limits: TFTPServerLimits = TFTPServerLimits(),
        interface: str = "",
        processes: bool = False,
        spare_workers: int = 0,
        follow_client_cpu: bool = True,
    ) -> None:
        self.reactor = reactor
        self.backend = backend
        self.policy = policy
        self.limits = limits
        #: Whether each download of a regular file (bigger than
        #: :attr:`small_download_blocks`) runs in a process of its own
        #: (:mod:`netsvc.tftp.downloader`), where the platform allows. Takes effect with
        #: :meth:`start_helper` (the service calls it when it starts).
        self.processes = processes and can_hand_off()
        #: Download processes kept ready for the next downloads
        #: (:mod:`netsvc.tftp.workers`); more start when more downloads run at once.
        #: Never more than ``max_sessions``: more downloads than that never run at once.
        self.spare_workers = spare_workers
        if limits.max_sessions is not None:
            self.spare_workers = min(spare_workers, limits.max_sessions)
        #: Downloads of at most this many blocks are served here all the same
        #: (:data:`SMALL_DOWNLOAD_BLOCKS`; 0: every download that can be handed over is).
        self.small_download_blocks = SMALL_DOWNLOAD_BLOCKS
        #: Whether a download process serving a client on this host moves to that
        #: client's CPU (:mod:`netsvc.tftp.colocate`).
        self.follow_client_cpu = follow_client_cpu
        self.helper: DownloadHelper | None = None
        #: Helpers replaced while downloads of theirs still ran: a stop reaches those too.
        self.retired_helpers: list[DownloadHelper] = []
        self.helper_watchdog = HelperWatchdog(reactor, self._helper_stuck)
        self._helper_replaced_at: float | None = None
        self._helper_restart: IDelayedCall | None = None
        self._stopping = False  # shutdown() was called: start nothing more
        #: Retransmission floors that downloads learned, per client host: later
        #: downloads for that host start from them (:mod:`netsvc.tftp.floors`).
        self.learned_floors = LearnedFloors(reactor.seconds)
        #: The listener's address. Transfer sockets bind to it, or, when it is the
        #: unspecified address, to the address each request was sent to (where the
        #: listening port tells): replies come from the address the client talked to.
        self.interface = interface
        #: Every transfer still alive, by client (address, port): a retransmitted request
        #: finds its transfer here instead of starting another one.
        self.transfers: dict[tuple[str, int], Transfer] = {}
        #: Transfers that count against the caps (a finished upload that dallies does not).
        self.active = 0
        #: Finished uploads still dallying (to repeat their last ACK), oldest first: as
        #: many as ``max_sessions`` at most, or a stream of small uploads would pile up
        #: sockets without bound.
        self.dallying: dict[tuple[str, int], Transfer] = {}
        self.per_client: dict[str, int] = {}
        self.requests: PerKeyRateLimiter[str] = PerKeyRateLimiter(
            limits.request_rate,
            limits.request_burst,
            reactor.seconds,
            classify=lambda host: NEVER if is_unanswerable_source(host) else None,
        )
        #: Sources the request rate holds back, reported in the log (see HeldBackSources).
        self.held_back: HeldBackSources[str] = HeldBackSources(
            self.log, "tftp: requests", reactor.seconds
        )
        self.counters = {
            "requests": 0, "ignored": 0, "rate_limited": 0, "refused": 0, "busy": 0
        }

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        key = _peer_key(addr)
        transfer = self.transfers.get(key)
        if transfer is not None:
            if not _looks_like_request(datagram) or transfer.is_repeat(datagram):
                # A retransmitted request: its transfer is already answering (an upload's
                # OACK goes out again only now: BlockReceiver.request_repeated).
                transfer.request_repeated(datagram)
                return
            # Another request from that address and port: the client of that transfer
            # has gone, and a new one has its port (a busy host reuses ports soon).
            transfer.supersede()
        # Only RRQ/WRQ belong here; anything else gets silence (no reflection, no loops).
        if not _looks_like_request(datagram) or addr[1] == 0:
            self.counters["ignored"] += 1
            return
        # A request sent to a broadcast or multicast address: every server that hears it
        # would answer (where the listening port can tell; see netsvc.destination).
        destination: Destination | None = getattr(self.transport, "destination", None)
        if destination is not None and destination.broadcast:
            self.counters["ignored"] += 1
            return
        host = addr[0]
        if not self.requests.allow(host):
            self.counters["ignored"] += 1
            if self.requests.table.get(host) is not NEVER:  # NEVER: not a real source
                self.counters["rate_limited"] += 1
                self.held_back.dropped(host)
            return
        if self.held_back.held:
            self.held_back.let_through(host)
        self.counters["requests"] += 1
        try:
            request = parse(datagram)
        except TFTPProtocolError as error:
            self.refuse(addr, error.code, error.reason)
            return
        assert isinstance(request, RRQ | WRQ)  # the opcode was checked above
        if request.mode is Mode.MAIL:
            self.refuse(addr, ErrorCode.ILLEGAL_OPERATION, "mail mode is not supported")
            return
        limits = self.limits
        if (limits.max_sessions is not None and self.active >= limits.max_sessions) or (
            limits.max_sessions_per_client is not None
            and self.per_client.get(host, 0) >= limits.max_sessions_per_client
        ):
            self.counters["busy"] += 1
            self.refuse(addr, ErrorCode.NOT_DEFINED, BUSY_MESSAGE)
            return
        self._start_transfer(request, datagram, addr, destination)

    def _start_transfer(
        self, request: Request, datagram: bytes, addr: Any, destination: Destination | None
    ) -> None:
        transfer = Transfer(self, request, addr, destination)
        transfer.request_datagram = datagram
        self.transfers[transfer.key] = transfer
        host = transfer.key[0]
        self.per_client[host] = self.per_client.get(host, 0) + 1
        self.active += 1
        self._publish_load()
        transfer.start()

    def serve_again(self, lost: Transfer) -> None:
        """Start the request of ``lost`` anew: its download went to a helper that never
        took it (and was replaced), so its client has heard nothing and waits still."""
        # Unless it asked again and is served already, or the server stops.
        if lost.key not in self.transfers and not self._stopping:
            self._start_transfer(lost.request, lost.request_datagram, lost.addr, lost.destination)

    def refuse(self, addr: Any, code: int, message: str) -> None:
        """Answer a request at ``addr`` with an ERROR from the listening port."""
        self.counters["refused"] += 1
        with suppress(OSError):
            self.transport.write(encode_error(code, message), addr)  # type: ignore[union-attr]

    def forget(self, transfer: Transfer) -> None:
        """Let a new request from the client address of ``transfer`` start another."""
        if self.transfers.get(transfer.key) is transfer:
            del self.transfers[transfer.key]

    def release_slot(self, transfer: Transfer) -> None:
        """A transfer stopped counting against the session caps (done, or dallying)."""
        if transfer.holds_slot:
            transfer.holds_slot = False
            self.active -= 1
            self._publish_load()
            host = transfer.key[0]
            remaining = self.per_client.get(host, 1) - 1
            if remaining > 0:
                self.per_client[host] = remaining
            else:
                self.per_client.pop(host, None)

    def dally_started(self, transfer: Transfer) -> None:
        """A complete upload dallies; beyond ``max_sessions`` such, the oldest stops."""
        self.dallying[transfer.key] = transfer
        limit = self.limits.max_sessions
        if limit is not None and len(self.dallying) > limit:
            oldest = next(iter(self.dallying.values()))
            oldest.end()  # its client most likely had the last ACK long ago

    def transfer_ended(self, transfer: Transfer) -> None:
        """Forget a finished transfer (called by the transfer)."""
        self.release_slot(transfer)
        if self.dallying.get(transfer.key) is transfer:
            del self.dallying[transfer.key]
        if self.transfers.get(transfer.key) is transfer:
            del self.transfers[transfer.key]

    def _publish_load(self) -> None:
        if self.helper is not None:
            self.helper.publish_load(self.active)

    def start_helper(self) -> None:
        """Start the process that runs downloads in processes of their own (if enabled)."""
        self._helper_restart = None
        if self.processes and self.helper is None:
            try:
                self.helper = DownloadHelper(self.spare_workers)
                self._publish_load()
            except OSError as error:
                self.log.error(
                    "tftp: cannot start the download helper ({error}); serving every"
                    " download in this process",
                    error=error.strerror,
                )

    def download_process_ended(self, helper: DownloadHelper) -> None:
        """A download handed to ``helper`` has ended (or its job was lost)."""
        helper.jobs.running -= 1
        if helper.jobs.running == 0 and helper in self.retired_helpers:
            self.retired_helpers.remove(helper)

    def helper_gone(self, helper: DownloadHelper) -> None:
        """``helper`` could not be reached: it died. Downloads are served here until
        another has started."""
        self._replace_helper(helper, f"is gone ({helper.gone})")

    def _helper_stuck(self, jobs: JobProgress) -> None:
        """The watchdog found the helper taking no downloads."""
        helper = self.helper
        if helper is not None and helper.jobs is jobs:
            self._replace_helper(
                helper,
                f"took none of {jobs.waiting()} download(s) in"
                f" {self.helper_watchdog.patience} s (they start again)",
            )

    def _replace_helper(self, helper: DownloadHelper, why: str) -> None:
        """Retire ``helper`` and start another in its place: at once, or
        :data:`HELPER_RESTART_INTERVAL` after the last replacement."""
        if helper is not self.helper:
            return
        now = self.reactor.seconds()
        delay = 0.0
        if self._helper_replaced_at is not None:
            delay = max(0.0, self._helper_replaced_at + HELPER_RESTART_INTERVAL - now)
        self._helper_replaced_at = now + delay
        self.log.error(
            "tftp: the download helper {why}; starting another in {delay:.1f} s",
            why=why,
            delay=delay,
        )
        helper.jobs.taken_at_end = helper.jobs.taken()  # it takes no more: stopped or dead
        helper.abandon()
        if helper.jobs.running:
            self.retired_helpers.append(helper)
        self.helper = None
        self._helper_restart = self.reactor.callLater(delay, self.start_helper)

    def shutdown(self) -> Deferred[None] | None:
        """Abort every transfer (the peers get ERROR 0; partial uploads are discarded).

        Downloads in processes of their own are told to stop too: the result fires once
        they have all ended and been logged (they are killed after :data:`STOP_GRACE`).
        """
        self._stopping = True
        for transfer in list(self.transfers.values()):
            transfer.abort(ErrorCode.NOT_DEFINED, SHUTDOWN_MESSAGE)
        self.helper_watchdog.cancel()
        if self._helper_restart is not None and self._helper_restart.active():
            self._helper_restart.cancel()
        self._helper_restart = None
        helpers = [*self.retired_helpers, *([self.helper] if self.helper else [])]
        self.helper, self.retired_helpers = None, []
        if not helpers:
            return None
        for helper in helpers:
            helper.stop()
        waiting = [t.when_ended() for t in self.transfers.values() if not t.finished]

        def kill() -> None:
            for helper in helpers:
                helper.kill()

        killer = self.reactor.callLater(STOP_GRACE, kill)

        def reap(result: object) -> None:
            if killer.active():
                killer.cancel()
            for helper in helpers:
                helper.close()

        return gatherResults(waiting).addBoth(reap)


class Transfer(EngineSession):
    """One RRQ or WRQ on its own socket (its TID), from request to log event."""

    def __init__(
        self,
        server: TFTPServer,
        request: Request,
        addr: Any,
        destination: Destination | None = None,
    ) -> None:
        super().__init__(server.reactor)
        self.server = server
        self.request = request
        self.addr, self.destination = addr, destination  # as the request came
        self.request_datagram = b""  # the request's bytes (set by the server)
        self.peer = self.key = _peer_key(addr)
        #: The address this transfer answers from (see :attr:`TFTPServer.interface`).
        self.local_host = server.interface
        if server.interface in _UNSPECIFIED and destination is not None and destination.local:
            self.local_host = destination.local
        self.negotiated: Negotiated | None = None
        self._duration_timer: IDelayedCall | None = None
        self._started = self.reactor.seconds()
        self._rejected: tuple[int, str] | None = None
        self._logged = False
        #: Whether this transfer counts against the server's session caps.
        self.holds_slot = True
        # A download in a process of its own: its report pipe while it runs, then its
        # report (or, for a process that ended without one, that it did).
        self._report_pipe: ReportPipe | None = None
        self._helper: DownloadHelper | None = None  # the one running this download
        self._job_index = -1  # its place among the jobs handed to that helper
        self._never_started = False  # its helper was replaced before taking it
        self._superseded = False  # ended for a new request from its client's port
        self._report: DownloadReport | None = None
        self._report_lost = False
        self._start_floor: float | None = None  # the download timer's first floor
        self._end_waiters: list[Deferred[None]] = []
        # While the backend opens the file: its answer, and the idle timeout on it.
        self._opening: Deferred[Any] | None = None
        self._open_timer: IDelayedCall | None = None

    # -- setup ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open a port, open the file, negotiate options and start the engine."""
        try:
            self.port = self._listen()
        except CannotListenError as error:
            self.log.error("tftp: no port for a transfer: {error}", error=error)
            # Told from the listening port, as a full server tells: a client's retry
            # may find a port free again.
            self.server.counters["busy"] += 1
            self.server.refuse(self.peer, ErrorCode.NOT_DEFINED, BUSY_MESSAGE)
            self.end()
            return
        if self.request.is_read:
            # The peer's ACKs on a socket of their own. (An upload gets one once it is
            # known to run in lock-step: see _start_receiving.)
            self.use_peer_socket()
        limits = self.server.limits
        if limits.max_duration is not None:
            self._duration_timer = self.reactor.callLater(limits.max_duration, self._too_long)
        request = self.request
        context = RequestContext.from_request(request, self.key, self._request_address())
        if request.is_read:
            opened = maybeDeferred(self.server.backend.open_read, context)
            opened.addBoth(self._backend_answered)
            opened.addCallback(self._start_sending)
        else:
            try:
                self.negotiated = negotiate(
                    request.options, self.server.policy, is_read=False, tsize=None
                )
            except OptionNegotiationError as error:
                self._reject(error.code, error.reason)
                return
            opened = maybeDeferred(
                self.server.backend.open_write,  # type: ignore[call-overload]
                context,
                self.negotiated.tsize,
            )
            opened.addBoth(self._backend_answered)
            opened.addCallback(self._start_receiving)
        opened.addErrback(self._setup_failed)
        if not opened.called and not self.finished:
            # A backend that answers later (a dynamic one): the wait is bounded like any
            # silence in a transfer, or a hung backend would hold a session slot for good.
            self._opening = opened
            self._open_timer = self.reactor.callLater(limits.idle_timeout, self._backend_late)

    def _backend_answered(self, result: object) -> object:
        self._opening = None
        _cancel(self._open_timer)
        self._open_timer = None
        return result

    def _backend_late(self) -> None:
        self._open_timer = None
        opening, self._opening = self._opening, None
        self._reject(ErrorCode.NOT_DEFINED, BACKEND_TIMEOUT_MESSAGE)
        if opening is not None:
            opening.cancel()  # tell the backend; its answer, if any, is ignored now

    def _request_address(self) -> tuple[str, int]:
        """Where the request was sent: the address this transfer answers from (the
        listener's when nothing better is known) and the listening port."""
        transport = self.server.transport
        listener = transport.getHost() if transport is not None else None
        return self.local_host or getattr(listener, "host", ""), getattr(listener, "port", 0)

    def _listen(self) -> IListeningPort:
        server = self.server
        port_range = server.limits.port_range
        def listen(number: int) -> IListeningPort:
            return listen_udp_quietly(self.reactor, number, self, self.local_host)

        if port_range is None:
            return listen(0)
        low, high = port_range
        candidates = list(range(low, high + 1))
        random.shuffle(candidates)
        for number in candidates[:64]:
            try:
                port = listen(number)
            except CannotListenError:
                continue
            return port
        raise CannotListenError(self.local_host, low, OSError("transfer port range exhausted"))

    def _start_sending(self, reader: Any) -> None:
        if self.finished:
            reader.close()
            return
        request = self.request
        text = request.mode is Mode.NETASCII
        size = None if text else reader.size
        if size == 0:
            # curl (7.88) rejects "tsize 0" in an OACK and gives up without a word; leaving
            # the option out is allowed (RFC 2347: a server may decline any option) and
            # costs a client nothing: an empty file is one empty block either way.
            size = None
        try:
            negotiated = negotiate(
                request.options, self.server.policy, is_read=True, tsize=size
            )
        except OptionNegotiationError as error:
            reader.close()
            self._reject(error.code, error.reason)
            return
        self.negotiated = negotiated
        settings = self._sender_settings(negotiated)
        if self._hand_to_process(reader, settings, text):
            return
        self.reader = NetasciiReader(reader) if text else reader
        self.engine = settings.new_sender(
            self.send_to_peer, self.engine_read, self.reactor.seconds()
        )
        self.fit_packet_size()
        self.after_event()

    def _sender_settings(self, negotiated: Negotiated) -> SenderSettings:
        limits = self.server.limits
        host = plain_host(self.key[0])
        timer = limits.timer_for(negotiated.timeout, self.server.learned_floors.floor_for(host))
        self._start_floor = timer.minimum
        return SenderSettings(
            blksize=negotiated.blksize,
            windowsize=negotiated.windowsize,
            preamble=OACK(negotiated.oack_items()).encode() if negotiated.granted else None,
            initial_rto=timer.initial,
            min_rto=timer.minimum,
            max_rto=timer.maximum,
            lowest_rto=timer.lowest,
            give_up_after=limits.idle_timeout,
            first_contact_retries=limits.first_contact_retries,
        )

    def is_repeat(self, datagram: bytes) -> bool:
        """Whether ``datagram``, a request from this transfer's client address and port,
        can be its request sent again, not a new client's that has the port now.

        Only the same bytes, and not after the client has been heard from a while ago: a
        client repeats its request while it hears nothing. (A copy of the request that
        the network duplicated comes within a round trip, long before
        :data:`REPEAT_WINDOW`.) A download in a worker cannot tell: the same bytes are
        taken as a repeat."""
        if datagram != self.request_datagram or self._logged:  # logged: a done upload
            return False
        engine = self.engine
        if engine is None or engine.stats.blocks == 0:
            return True
        age: float = self.reactor.seconds() - self._started
        return age < REPEAT_WINDOW

    def supersede(self) -> None:
        """A new request came from this transfer's client address and port: that client
        is gone, and the port is another's now. End at once, sending nothing (it would
        reach the new client), as ``peer-gone``. A download in a worker only gives up
        its place here: it ends by itself (the port's new owner refuses its blocks) and
        reports as usual."""
        self.server.forget(self)
        if self._report_pipe is not None or self.finished:
            return
        self._superseded = True
        if self.engine is not None:
            self.engine.peer_unreachable(self.reactor.seconds(), SUPERSEDED_MESSAGE)
        self.end()

    def request_repeated(self, datagram: bytes) -> None:
        """The client sent a request again from the same address and port."""
        engine = self.engine
        if isinstance(engine, BlockReceiver) and datagram[:2] == b"\x00\x02":
            engine.request_repeated()
            self.after_event()

    def _hand_to_process(self, reader: Any, settings: SenderSettings, text: bool) -> bool:
        """Run this download in a process of its own, if there is a helper; whether it does.

        Only a download of more than :attr:`TFTPServer.small_download_blocks` blocks of a
        regular file (a descriptor the worker receives, read synchronously) and a
        socket connected to the client; anything else is served here. The worker polls
        awake for ACKs while no other transfer runs (``TFTPServer._publish_load``), where
        this server's sockets do.
        """
        server, peer_socket = self.server, self._peer_socket
        helper = server.helper
        fd = reader.fileno() if isinstance(reader, FilesystemReader) else None
        if helper is None or peer_socket is None or fd is None or reader.size is None:
            return False
        if reader.size // settings.blksize + 1 <= server.small_download_blocks:
            return False
        max_duration = server.limits.max_duration
        if max_duration is not None:
            max_duration -= self.reactor.seconds() - self._started
        # Not with --no-spin.
        sockets = getattr(self.port, "socket_set", None)
        spin = sockets is not None and sockets.spinner is not None
        job = DownloadJob(
            settings,
            size=reader.size,
            netascii=text,
            max_duration=max_duration,
            spin=spin,
            follow_client_cpu=server.follow_client_cpu
            and is_on_this_host(self.key[0], self.local_host or ""),
        )
        pipe = helper.hand_over(job, peer_socket, fd)
        if pipe is None:
            if helper.gone is not None:
                server.helper_gone(helper)
            return False
        self._helper = helper
        self._job_index = helper.jobs.handed - 1
        server.helper_watchdog.handed_over(helper.jobs)
        self._report_pipe = ReportPipe(self.reactor, pipe, self._process_ended)
        # The client's socket, the file and the time limit are the worker's now. The port
        # stays here and answers strangers.
        self._close_peer_socket()
        reader.close()
        if self._duration_timer is not None and self._duration_timer.active():
            self._duration_timer.cancel()
        self._duration_timer = None
        return True

    def _process_ended(self, report: DownloadReport | None) -> None:
        self._report_pipe = None
        helper = self._helper
        if helper is not None:
            self._never_started = report is None and helper.jobs.never_taken(self._job_index)
            self.server.download_process_ended(helper)
        self._report = report
        self._report_lost = report is None
        self.end()
        if self._never_started:
            self.server.serve_again(self)

    def when_ended(self) -> Deferred[None]:
        """A Deferred that fires once this transfer has ended and been logged."""
        waiter: Deferred[None] = Deferred()
        if self.finished:
            waiter.callback(None)
        else:
            self._end_waiters.append(waiter)
        return waiter

    def abort(self, code: int, message: str) -> None:
        if self._report_pipe is not None:
            return  # its process ends it; the server stops them all (TFTPServer.shutdown)
        super().abort(code, message)

    def _start_receiving(self, writer: Any) -> None:
        if self.finished:
            writer.abort()
            return
        negotiated = self.negotiated
        assert negotiated is not None
        self.writer = NetasciiWriter(writer) if self.request.mode is Mode.NETASCII else writer
        if negotiated.windowsize == 1:
            # In lock-step, a socket connected to the client as for downloads: the
            # kernel reports a closed client port to it (ICMP port unreachable), so an
            # upload whose client has gone ends at once (peer-gone), not after the idle
            # timeout. A window's blocks stay on the port, read in bursts (fit_packet_size).
            self.use_peer_socket()
        limits = self.server.limits
        self.engine = BlockReceiver(
            self.send_to_peer,
            self.engine_write,
            now=self.reactor.seconds(),
            preamble=(
                OACK(negotiated.oack_items()).encode() if negotiated.granted else encode_ack(0)
            ),
            blksize=negotiated.blksize,
            windowsize=negotiated.windowsize,
            timer=limits.timer_for(negotiated.timeout),
            give_up_after=limits.idle_timeout,
            first_contact_retries=limits.first_contact_retries,
            dally=limits.dally,
            repeat_ack=True,  # curl's own timer would take seconds per lost block
        )
        self.fit_packet_size()
        self.after_event()

    def _setup_failed(self, failure: Failure) -> None:
        if self.finished:
            return  # already ended (a late backend, a shutdown): the client was told
        error = failure.value
        if isinstance(error, BackendError):
            self._reject(error.code, error.message)
        else:
            self.log.failure(
                "tftp: backend failed to open {name!r}", failure, name=self.request.filename
            )
            self._reject(ErrorCode.NOT_DEFINED, "internal server error")

    def _reject(self, code: int, message: str) -> None:
        """Refuse the request from the transfer's own port (its TID), then end."""
        self._rejected = (code, message)
        self.send_to_peer(encode_error(code, message))
        self.end()

    def _too_long(self) -> None:
        self._duration_timer = None
        self.abort(ErrorCode.NOT_DEFINED, TIME_LIMIT_MESSAGE)

    # -- teardown -----------------------------------------------------------------------

    def after_event(self) -> None:
        super().after_event()
        # Runs per datagram: the cheap flags first (only a committed upload can qualify).
        if self.committed and not self._logged and self.succeeded:
            # An upload is complete (committed and acknowledged) before its dally ends:
            # report it now, with its real duration, and stop counting it against the caps.
            self.server.release_slot(self)
            self._log_outcome()
            self.server.dally_started(self)

    def session_ended(self) -> None:
        _cancel(self._duration_timer)
        _cancel(self._open_timer)
        self._duration_timer = self._open_timer = None
        self.server.transfer_ended(self)
        self._remember_floor()
        self._log_outcome()
        waiters, self._end_waiters = self._end_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _remember_floor(self) -> None:
        """Pass on what this download's timer learned of its client's delays."""
        if self._report is not None:
            floor = self._report.timer_floor
        elif isinstance(self.engine, BlockSender):
            floor = self.engine.timer.minimum
        else:
            return  # an upload, or nothing ran
        if self._start_floor is None or floor == self._start_floor:
            return
        host = plain_host(self.key[0])
        if floor > self._start_floor:
            self.server.learned_floors.learned(host, floor)
        else:  # real losses took it down (RetransmitTimer.lower_floor)
            self.server.learned_floors.lowered(host, floor)

    @property
    def succeeded(self) -> bool:
        if self._report is not None:
            return self._report.outcome is Outcome.COMPLETE
        return super().succeeded

    def _result(self) -> tuple[Outcome | None, TransferStats] | None:
        """The engine's outcome and counters, wherever it ran; ``None`` if none ran."""
        if self._report is not None:
            return self._report.outcome, self._report.stats
        if self.engine is not None:
            return self.engine.outcome, self.engine.stats
        return None

    def _size_probe(self, outcome: Outcome | None, stats: TransferStats) -> bool:
        return (
            self.request.is_read
            and outcome is Outcome.PEER_ERROR
            and stats.error_code == ErrorCode.OPTION_NEGOTIATION
            and stats.blocks == 0
            and self.negotiated is not None
            and bool(self.negotiated.granted)
        )

    def _log_outcome(self) -> None:
        if self._logged:
            return
        self._logged = True
        result = self._result()
        if result is None:
            stats: dict[str, Any] = {"bytes": 0, "retransmits": 0}
            if self._never_started:
                outcome, code, message = "aborted", None, "its helper never took it: served again"
            elif self._report_lost:
                outcome, code, message = "aborted", None, "its process ended without a report"
            elif self._superseded:  # before its engine started (the file still opening)
                outcome, code, message = "peer-gone", None, SUPERSEDED_MESSAGE
            else:
                outcome = "refused"
                code, message = self._rejected or (None, "")
        else:
            ended, counters = result
            if self.succeeded:
                outcome = "complete"
            elif self._size_probe(ended, counters):
                # The client read our OACK (typically tsize) and ended with ERROR 8 on
                # purpose, as UEFI firmware does to learn a file's size: a normal end.
                outcome = "size-probe"
            else:
                outcome = ended.value if ended else "aborted"
            code, message = counters.error_code, counters.error_message
            stats = {"bytes": counters.bytes, "retransmits": counters.retransmits}
        negotiated = self.negotiated
        direction = "read" if self.request.is_read else "write"
        filename = self.request.filename
        peer = format_address(self.key)  # [::1]:69 for IPv6, as in URLs
        duration = self.reactor.seconds() - self._started
        self.log.info(
            # The message comes ready-made: an observer that renders the format (as the
            # JSON one does for every field in it) then renders one field, not six.
            "{summary}",
            summary=f"tftp {direction} {filename!r} {peer}: {outcome},"
            f" {stats['bytes']} bytes in {duration:.3f}s",
            direction=direction,
            filename=filename,
            peer=peer,
            mode=self.request.mode.value,
            options=dict(negotiated.oack_items()) if negotiated else {},
            outcome=outcome,
            error_code=code,
            error_message=message,
            duration=duration,
            # The process that ran the download, when not this one (TFTPServer.processes).
            process=self._report.pid if self._report is not None else None,
            **stats,
        )


class StaleUploadCleanup(Service):
    """Removes the upload temporary files a crashed server left under the root, at start.

    Only files older than an hour (the default of
    :func:`netsvc.tftp.backend.cleanup_stale_temp_files`): a younger one may be an upload
    that another server on the same root is receiving right now. The walk runs in the
    reactor's thread pool, so a large root delays neither the start nor any transfer; a
    stop ends it early. :attr:`done` fires with the number of files removed.
    """

    log = Logger()

    def __init__(self, backend: FilesystemBackend, reactor: Any) -> None:
        self.backend = backend
        self.reactor = reactor
        #: Fires with how many files the walk removed (0 if it failed: logged); ``None``
        #: until the service starts.
        self.done: Deferred[int] | None = None
        self._stopping = False

    def startService(self) -> None:
        Service.startService(self)
        self._stopping = False
        self.done = deferToThreadPool(
            self.reactor,
            self.reactor.getThreadPool(),
            self.backend.cleanup_stale_temp_files,
            stopping=lambda: self._stopping,
        )
        self.done.addCallbacks(self._walked, self._failed)

    def stopService(self) -> Deferred[int] | None:
        Service.stopService(self)
        # The walk notices before its next directory: the stop waits for that, not for
        # the rest of the tree.
        self._stopping = True
        return self.done

    def _walked(self, removed: int) -> int:
        if removed:
            self.log.info(
                "tftp: removed {count} upload temporary file(s) that a crashed server left"
                " under {root}",
                count=removed,
                root=os.fsdecode(self.backend.root),
            )
        return removed

    def _failed(self, failure: Failure) -> int:
        self.log.failure("tftp: the clean-up of stale upload files failed", failure)
        return 0


class _RequestListener(UDPListenService):
    """The listening port, able to tell where each request was sent (so that requests
    to a broadcast address are ignored; see :func:`listen_udp_with_destinations`)."""

    def _listen(self) -> IListeningPort:
        return listen_udp_with_destinations(
            self.reactor, self.port_number, self.protocol, self.interface, self.max_packet_size
        )


class _TFTPService(ListenGroup):
    """The listening service plus a clean shutdown of running transfers."""

    def __init__(self, server: TFTPServer) -> None:
        ListenGroup.__init__(self)
        self.server = server

    def startService(self) -> None:
        self.server.start_helper()
        ListenGroup.startService(self)

    def stopService(self) -> Deferred[None] | None:
        ended = self.server.shutdown()
        result: Deferred[None] | None = ListenGroup.stopService(self)
        if ended is None:
            return result
        if result is None:
            return ended
        return gatherResults([ended, result]).addCallback(lambda _: None)


def tftp_service(
    reactor: Any,
    backend: IBackend,
    *,
    port: int = TFTP_PORT,
    interface: str = "",
    policy: ServerOptionPolicy = DEFAULT_POLICY,
    limits: TFTPServerLimits = TFTPServerLimits(),
    processes: bool = False,
    spare_workers: int = 0,
    follow_client_cpu: bool = True,
) -> ListenGroup:
    """A service serving ``backend`` over TFTP on ``interface``:``port``.

    ``processes``, ``spare_workers``, ``follow_client_cpu``: see
    :attr:`TFTPServer.processes`, :attr:`TFTPServer.spare_workers` and
    :attr:`TFTPServer.follow_client_cpu`.
    """
    server = TFTPServer(
        reactor,
        backend,
        policy=policy,
        limits=limits,
        interface=interface,
        processes=processes,
        spare_workers=spare_workers,
        follow_client_cpu=follow_client_cpu,
    )
    service = _TFTPService(server)
    add_child(service, _RequestListener(reactor, port, server, interface, what="TFTP"))
    return service

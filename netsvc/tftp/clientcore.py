"""The client's side of a transfer, without I/O: request, first reply, engine, outcome.

Both client drivers use it: :mod:`netsvc.tftp.client` (Twisted, Deferreds) and
:mod:`netsvc.tftp.blocking` (a blocking socket, for the command line). It decides what
the server's first reply means (:func:`judge_first_reply`), when to repeat the request
(:class:`RequestRetry`), builds the engine for the agreed options (:func:`new_engine`)
and turns an engine's end into a :class:`TFTPError` (:func:`engine_error`).
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from collections.abc import Callable
from contextlib import suppress

import attrs

from netsvc.tftp.engine import BlockReceiver, BlockSender, Outcome, RetransmitTimer
from netsvc.tftp.options import Negotiated, OptionNegotiationError, check_oack, request_options
from netsvc.tftp.packets import RRQ, WRQ, ErrorCode, Mode, TFTPProtocolError, encode_ack, parse

__all__ = [
    "TFTP_PORT",
    "ClientSettings",
    "FirstReply",
    "Next",
    "RequestRetry",
    "TFTPError",
    "TransferResult",
    "download_request",
    "engine_error",
    "judge_first_reply",
    "new_engine",
    "request_timer",
    "resolve",
    "upload_request",
    "without_options",
]

TFTP_PORT = 69


class TFTPError(Exception):
    """A transfer failed. ``code`` is the TFTP error code (from the server, or ours);
    ``timed_out`` tells a silent server from one that answered with an error;
    ``remote`` whether the server sent the ERROR."""

    def __init__(
        self, code: int, message: str, *, remote: bool = False, timed_out: bool = False
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.remote = remote
        self.timed_out = timed_out

    def __str__(self) -> str:
        if self.timed_out:
            return self.message
        origin = "server" if self.remote else "local"
        return f"{self.message} ({origin} error {self.code})"


@attrs.frozen
class TransferResult:
    """What a finished transfer did."""

    bytes: int
    duration: float
    options: Negotiated
    retransmits: int
    server: tuple[str, int]


def resolve(host: str, port: int, family: int = socket.AF_UNSPEC) -> tuple[str, int]:
    """The (address, port) to send to; names are looked up (blocking, like the CLI wants)."""
    with suppress(ValueError):
        literal = ipaddress.ip_address(host)
        if family == socket.AF_INET6 and literal.version == 4:
            return (f"::ffff:{literal}", port)
        if isinstance(literal, ipaddress.IPv6Address) and literal.ipv4_mapped is not None:
            # As the socket will show the replies' source (Python < 3.13 would print
            # "::ffff:7f00:1", which then never matches).
            return (f"::ffff:{literal.ipv4_mapped}", port)
        return (str(literal), port)
    infos = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
    address = infos[0][4]
    return (str(address[0]), port)


class RequestRetry:
    """The request phase's timer: resend with backoff until ``give_up_after`` passed."""

    def __init__(self, timer: RetransmitTimer, give_up_after: float, started: float) -> None:
        self.timer = timer
        self.give_up_after = give_up_after
        self.started = started
        #: Requests sent again (the first send is not a retransmission).
        self.retransmits = -1

    def next_wait(self, now: float) -> float | None:
        """Count a send of the request made now; how long to wait for an answer before
        the next one, or ``None`` when it is time to give up (send nothing then)."""
        if now - self.started >= self.give_up_after:
            return None
        self.retransmits += 1
        delay = self.timer.rto
        self.timer.timed_out()
        return delay


class Next(enum.Enum):
    """What a driver does with the server's first reply."""

    IGNORE = "ignore"  # not an answer to our request: keep waiting
    RETRY_PLAIN = "retry-plain"  # the server refused the options: ask again without them
    FAIL = "fail"  # the server answered with ERROR: the transfer is over
    REFUSE = "refuse"  # a bad OACK: send ERROR ``error.code`` to the server, then fail
    START = "start"  # lock onto the replying port and run the engine


@attrs.frozen
class FirstReply:
    """The verdict on a first reply (see :class:`Next`)."""

    next: Next
    error: TFTPError | None = None
    negotiated: Negotiated | None = None
    #: DATA 1 of a download without options, to feed to the engine at once.
    first_data: bytes | None = None


_IGNORE = FirstReply(Next.IGNORE)


def judge_first_reply(
    request: RRQ | WRQ, datagram: bytes, *, max_size: int | None
) -> FirstReply:
    """What the first datagram from the server's address means for ``request``.

    An ERROR 8 to a request with options asks for a plain retry; an OACK is checked
    against what was asked (never more, nothing unrequested; a download's tsize against
    ``max_size``); DATA 1 (download) or ACK 0 (upload) means the server ignored the
    options: RFC 1350 defaults.
    """
    try:
        packet = parse(datagram)
    except TFTPProtocolError:
        return _IGNORE  # junk from the server's address: keep waiting
    opcode = packet.opcode
    if opcode == 5:  # ERROR
        code, message = packet.code, packet.message  # type: ignore[union-attr]
        if code == ErrorCode.OPTION_NEGOTIATION and request.options:
            return FirstReply(Next.RETRY_PLAIN)
        return FirstReply(Next.FAIL, TFTPError(code, message or "error", remote=True))
    is_read = request.is_read
    if opcode not in (6, 3 if is_read else 4):
        return _IGNORE  # not an answer to our request (a stray ACK, say)
    if opcode == 4 and packet.block != 0:  # type: ignore[union-attr]
        return _IGNORE
    if opcode == 3 and packet.block != 1:  # type: ignore[union-attr]
        return _IGNORE
    if opcode != 6:
        return FirstReply(
            Next.START, negotiated=Negotiated(), first_data=datagram if opcode == 3 else None
        )
    if not request.options:
        refusal = TFTPError(ErrorCode.OPTION_NEGOTIATION, "unexpected OACK")
        return FirstReply(Next.REFUSE, refusal)
    try:
        negotiated = check_oack(
            request.options,
            packet.options,  # type: ignore[union-attr]
            max_tsize=max_size if is_read else None,
        )
    except OptionNegotiationError as error:
        return FirstReply(Next.REFUSE, TFTPError(error.code, error.reason))
    return FirstReply(Next.START, negotiated=negotiated)


def download_request(
    remote: str,
    mode: Mode,
    *,
    blksize: int | None,
    windowsize: int | None,
    timeout: int | None,
    tsize: bool,
    options: bool,
) -> RRQ:
    """The RRQ for a download: the options given (and tsize 0, to learn the size)."""
    asked = _asked(options, blksize, windowsize, timeout, 0 if tsize else None)
    return RRQ(remote, mode, asked)


def upload_request(
    remote: str,
    mode: Mode,
    size: int | None,
    *,
    blksize: int | None,
    windowsize: int | None,
    timeout: int | None,
    tsize: bool,
    options: bool,
) -> WRQ:
    """The WRQ for an upload of ``size`` bytes (announced as tsize in octet mode)."""
    announced = size if tsize and mode is Mode.OCTET else None
    return WRQ(remote, mode, _asked(options, blksize, windowsize, timeout, announced))


def _asked(
    options: bool,
    blksize: int | None,
    windowsize: int | None,
    timeout: int | None,
    tsize: int | None,
) -> tuple[tuple[str, str], ...]:
    if not options:
        return ()
    return request_options(blksize=blksize, windowsize=windowsize, timeout=timeout, tsize=tsize)


@attrs.frozen
class ClientSettings:
    """How a client transfer runs, whichever driver runs it."""

    #: The retransmission timer (see :func:`request_timer`).
    timer: RetransmitTimer
    #: Seconds without progress before the transfer fails.
    give_up_after: float
    #: A download larger than this is refused (by its tsize, or as it arrives).
    max_size: int | None = None
    #: Called with the options once the server's first reply settled them.
    on_negotiated: Callable[[Negotiated], object] | None = None


def request_timer(timeout: int | None) -> RetransmitTimer:
    """The retransmission timer of a client transfer; ``timeout`` (the option, in seconds)
    caps its backoff, 2 s without it."""
    longest = float(timeout or 2)
    return RetransmitTimer(initial=min(1.0, longest), minimum=0.005, maximum=longest)


def without_options(request: RRQ | WRQ) -> RRQ | WRQ:
    """The same request in plain RFC 1350 form."""
    return type(request)(request.filename, request.mode)


def new_engine(
    request: RRQ | WRQ,
    reply: FirstReply,
    *,
    send: Callable[[bytes], None],
    read: Callable[[int], bytes | None],
    write: Callable[[bytes], bool],
    settings: ClientSettings,
    now: float,
) -> BlockSender | BlockReceiver:
    """The engine for a started transfer (``reply.next`` is START). When the reply was a
    download's first DATA block, the caller feeds ``reply.first_data`` to the engine once
    it has stored it (the engine's ``write`` may look the engine up)."""
    negotiated = reply.negotiated
    assert negotiated is not None
    timer, give_up_after = settings.timer, settings.give_up_after
    agreed = RetransmitTimer(
        initial=timer.initial,
        minimum=timer.minimum,
        maximum=min(timer.maximum, float(negotiated.timeout or timer.maximum)),
    )
    if not request.is_read:
        return BlockSender(
            send, read, now=now, blksize=negotiated.blksize,
            windowsize=negotiated.windowsize, timer=agreed, give_up_after=give_up_after,
        )
    first_data = reply.first_data
    return BlockReceiver(
        send, write, now=now,
        preamble=None if first_data is not None else encode_ack(0),
        blksize=negotiated.blksize, windowsize=negotiated.windowsize, timer=agreed,
        give_up_after=give_up_after, dally=min(2.0, agreed.maximum),
        max_bytes=settings.max_size,
    )


def engine_error(engine: BlockSender | BlockReceiver | None) -> TFTPError:
    """The error for a transfer that ended without success."""
    if engine is None:
        return TFTPError(0, "transfer abandoned")
    stats, outcome = engine.stats, engine.outcome
    return TFTPError(
        stats.error_code if stats.error_code is not None else 0,
        stats.error_message or "transfer failed",
        remote=outcome is Outcome.PEER_ERROR,
        timed_out=outcome is Outcome.TIMED_OUT,
    )

"""Sans-I/O TFTP transfer engines: a block sender and a block receiver, for both roles.

No sockets, no reactor, no clock: the caller feeds events in (a datagram from the peer, a
timer expiring, a write completing) together with the current time, and the engine answers
by calling its ``send`` function with datagrams and by setting :attr:`deadline`, the
moment the caller must call ``on_timeout``. A server uses a :class:`BlockSender` for RRQ
and a :class:`BlockReceiver` for WRQ; a client the other way round.

What the engines guarantee:

* Windowed transfer (RFC 7440) with windowsize 1 being plain RFC 1350 lock-step. On a gap
  the receiver acknowledges the last block it has in order and the sender goes back to the
  block after it (go-back-N).
* Block numbers roll over past 65535 to 0, on send and receive; a receiver also follows a
  sender that wraps to 1. A transfer ends with the first block shorter than blksize, so a
  file that is an exact multiple of blksize ends with an empty block, and 0 bytes is one
  empty block.
* No Sorcerer's Apprentice: a duplicate ACK never makes the sender retransmit in lock-step;
  in windowed mode an ACK that does not advance the window rewinds it at most once, and
  never when it repeats an ACK that acknowledged blocks sent twice (the peer's answer to
  the copies, as atftp gives it, not a gap in the next window).
* The receiver re-acknowledges every duplicate of the block it acknowledged last, and
  after the final block it dallies (stays to re-acknowledge a retransmitted last block).
* Retransmission is adaptive (RFC 1123 4.2.3.2): each transfer estimates its round-trip
  time like TCP (SRTT/RTTVAR, RFC 6298, with Karn's rule: no sample from a retransmitted
  block), so a loss on a LAN costs milliseconds. A lock-step sender that finds a timeout
  was spurious (the resent block acknowledged twice, the second ACK at once) raises its
  timer's floor to twice the delay it saw; one that was a real loss (the copy answered
  within a round trip) halves it again, down to the timer's ``lowest``. Timeouts back off
  exponentially up to the timer's ``maximum``, and a transfer that makes no progress for
  ``give_up_after`` seconds (or, if set, retransmits ``max_retries`` times in a row) fails.
* Data is acknowledged only after the sink has written it (the sink may finish later:
  :meth:`BlockReceiver.write_done`).
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Callable

import attrs

from netsvc.tftp.packets import ErrorCode

__all__ = [
    "BlockReceiver",
    "BlockSender",
    "LockstepPoint",
    "Outcome",
    "RetransmitTimer",
    "TransferStats",
    "encode_error",
    "window_receive_buffer",
]

_HEADER = struct.Struct("!HH")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from

Send = Callable[[bytes], None]

#: Blocks a lock-step sender may have in flight while it probes after timeouts.
_PROBE_BLOCKS = 4

#: A peer that gets a block twice answers the copy at once, so its repeated ACK follows
#: the first within about one path delay (both at once when the peer was the one held
#: up). A repeat that comes later is the peer's own retransmission timer (busybox repeats
#: its ACK after 100 ms of silence): it says nothing about our timeout, and taking it as
#: proof of one would raise the floor from a delay our own timer made, again and again.
_REPEAT_WITHIN = 0.02

#: An ACK this soon after a retransmission (or within two smoothed round trips, if
#: longer) answers the retransmission, not the first copy (see ``_check_lost``).
_PROMPT_ANSWER = 0.001
#: A receiver with ``repeat_ack`` repeats its ACK for one missing block at most this
#: often (on its backed-off timer: 4 repeats span about 15 x its timeout), then leaves it
#: to the sender's timer. A sender that ignores old ACKs and restarts its wait at each
#: one (busybox waits 100 ms for silence) would otherwise retransmit later, not sooner.
_ACK_REPEATS = 4

# A sender builds the blocks after its window while it waits for the ACK, so that the
# ACK is answered with one send; at most this many bytes (and one window) are built ahead.
_STAGE_BYTES = 128 * 1024


_MAX_RECEIVE_BUFFER = 8 * 1024 * 1024


def window_receive_buffer(blksize: int, windowsize: int) -> int:
    """The socket receive buffer a receiver of windows needs: two windows' worth.

    A burst larger than the buffer loses its tail, which the sender only notices at a
    timeout. Linux counts a datagram's memory, not its payload (2.3 KiB for 1,472 bytes,
    17 KiB for 8,196 on loopback), hence ``2 * blksize + 2048`` per block; capped at 8 MiB.
    """
    return min(_MAX_RECEIVE_BUFFER, 2 * windowsize * (2 * blksize + 2048))


def encode_error(code: int, message: str) -> bytes:
    """An ERROR datagram (the message is truncated to keep the datagram small)."""
    text = message.replace("\0", " ").encode("utf-8", "replace")[:200]
    return _pack_header(5, code) + text + b"\0"


#: How a transfer whose peer's port closed ends (:meth:`_Engine.peer_unreachable`).
_UNREACHABLE = "the peer's port is closed (ICMP port unreachable)"


class Outcome(enum.Enum):
    """How a transfer ended (``None`` on the engine while it is still running)."""

    COMPLETE = "complete"  # every byte transferred and acknowledged
    PEER_ERROR = "peer-error"  # the peer sent ERROR
    LOCAL_ERROR = "local-error"  # we aborted (bad packet, write failure, shutdown)
    TIMED_OUT = "timed-out"  # no progress within the retry/deadline budget
    PEER_GONE = "peer-gone"  # the peer's port closed (ICMP port unreachable) before the end


@attrs.define
class TransferStats:
    """Counters for the one log event per transfer."""

    started: float = 0.0
    finished: float | None = None
    blocks: int = 0  # blocks delivered in order (receiver) / acknowledged (sender)
    bytes: int = 0
    retransmits: int = 0  # datagrams sent again after a timeout or a rewind
    timeouts: int = 0
    error_code: int | None = None
    error_message: str = ""


class RetransmitTimer:
    """Retransmission timeout from measured round trips (RFC 6298 arithmetic).

    ``initial`` is used until the first sample; ``minimum`` keeps a burst of loopback
    samples from producing a timer shorter than the peer's scheduling jitter; ``maximum``
    caps the backoff (and is lowered to the TFTP ``timeout`` option when one is agreed).
    ``lowest`` (at most ``minimum``, by default equal) is as low as :meth:`lower_floor`
    takes the floor: a floor learned earlier can start above it.
    """

    __slots__ = ("backoff", "initial", "lowest", "maximum", "minimum", "rto", "rttvar", "srtt")

    def __init__(
        self,
        initial: float = 1.0,
        minimum: float = 0.005,
        maximum: float = 2.0,
        lowest: float | None = None,
    ) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError(f"need 0 < minimum <= maximum, got {minimum}, {maximum}")
        if lowest is not None and not 0 < lowest <= minimum:
            raise ValueError(f"need 0 < lowest <= minimum, got {lowest}, {minimum}")
        self.initial = initial
        self.minimum = minimum
        self.lowest = minimum if lowest is None else lowest
        self.maximum = maximum
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.backoff = 1
        self.rto = min(max(initial, minimum), maximum)

    def sample(self, rtt: float) -> None:
        """A round trip measured on a block that was sent once (Karn's rule)."""
        # Runs once per block: plain arithmetic, no helper calls.
        if rtt < 0.0:
            rtt = 0.0
        srtt = self.srtt
        if srtt is None:
            srtt = rtt
            rttvar = rtt / 2
        else:
            delta = srtt - rtt
            rttvar = 0.75 * self.rttvar + 0.25 * (delta if delta >= 0.0 else -delta)
            srtt = 0.875 * srtt + 0.125 * rtt
        self.srtt = srtt
        self.rttvar = rttvar
        self.backoff = 1
        rto = srtt + 4 * rttvar
        if rto < self.minimum:
            rto = self.minimum
        if rto > self.maximum:
            rto = self.maximum
        self.rto = rto

    def progressed(self) -> None:
        """The peer acknowledged something new, but no round trip could be timed.

        TCP keeps a backed-off timer until the next valid sample (Karn). With one block in
        flight and heavy loss, valid samples get rare and the timer would stay at its
        maximum for good, so the backoff is halved instead: it still grows when the round
        trip really got longer, and comes back down when it did not.
        """
        if self.backoff > 1:
            self.backoff //= 2
            self._update()

    def timed_out(self) -> None:
        """Double the timeout (up to ``maximum``) after a retransmission."""
        if self.rto < self.maximum:  # past the cap, more backoff would only take longer to undo
            self.backoff *= 2
            self._update()

    def raise_floor(self, delay: float) -> None:
        """A timeout turned out to be spurious: an ACK took ``delay`` seconds and came
        after all. The timer never fires sooner than twice that again (up to
        ``maximum``); the samples of a quick path would otherwise pull it back under the
        delays the peer or this machine (a CPU shared by many transfers) really has."""
        floor = min(2 * delay, self.maximum)
        if floor > self.minimum:
            self.minimum = floor
            self._update()

    def lower_floor(self) -> None:
        """A timeout was a real loss: the floor only made its recovery wait. Halve it (not
        below ``lowest``): on a lossy path a floor learned from late ACKs, or one shared
        by an earlier download (:mod:`netsvc.tftp.floors`), would otherwise cost every
        loss of the transfer that much."""
        if self.minimum > self.lowest:
            self.minimum = max(self.minimum / 2, self.lowest)
            self._update()

    def _update(self) -> None:
        base = self.initial if self.srtt is None else self.srtt + 4 * self.rttvar
        self.rto = min(max(base, self.minimum) * self.backoff, self.maximum)


class _Engine:
    """What the sender and receiver share: timer bookkeeping, ending, errors."""

    def __init__(
        self,
        send: Send,
        *,
        now: float,
        blksize: int,
        windowsize: int,
        timer: RetransmitTimer | None,
        max_retries: int | None,
        give_up_after: float,
        first_contact_retries: int,
    ) -> None:
        if not 8 <= blksize <= 65464:
            raise ValueError(f"blksize out of range: {blksize}")
        if not 1 <= windowsize <= 65535:
            raise ValueError(f"windowsize out of range: {windowsize}")
        self.send = send
        self.blksize = blksize
        self.windowsize = windowsize
        self.timer = timer if timer is not None else RetransmitTimer()
        self.max_retries = max_retries
        self.give_up_after = give_up_after
        self.stats = TransferStats(started=now)
        self.outcome: Outcome | None = None
        #: When the caller must call ``on_timeout`` (``None``: no timer needed).
        self.deadline: float | None = None
        self._retries = 0
        self._last_progress = now
        #: Until the peer answers once, it may be a spoofed address: ``first_contact_retries``
        #: bounds what we send it (a reflection attack gets a handful of small packets).
        self.first_contact_retries: float = first_contact_retries  # math.inf: no bound
        self._peer_proven = False

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def _finish(self, outcome: Outcome, now: float) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.stats.finished = now
            self.deadline = None

    def _progress(self, now: float) -> None:
        self._retries = 0
        self._last_progress = now
        self._peer_proven = True

    def _should_give_up(self, now: float) -> bool:
        self._retries += 1
        self.stats.timeouts += 1
        if self.max_retries is not None and self._retries > self.max_retries:
            return True
        if not self._peer_proven and self._retries > self.first_contact_retries:
            return True
        return now - self._last_progress >= self.give_up_after

    def abort(self, code: int, message: str, now: float) -> None:
        """End the transfer locally, telling the peer why with an ERROR."""
        if self.outcome is None:
            self.send(encode_error(code, message))
            self.stats.error_code = code
            self.stats.error_message = message
            self._finish(Outcome.LOCAL_ERROR, now)

    def peer_unreachable(self, now: float, why: str = _UNREACHABLE) -> None:
        """The peer's port is closed: something we sent it came back as ICMP port
        unreachable (``ECONNREFUSED`` on a socket connected to it). The peer has gone, so
        the transfer ends now, with no ERROR (nobody would read it), instead of
        retransmitting until :attr:`give_up_after`. An ICMP error must name both ports of
        the transfer, as an ERROR from the peer must, and one of those ends it too.
        (``why``: how it is known, when not from an ICMP error.)"""
        if self.outcome is None:
            self.stats.error_message = why
            self._finish(Outcome.PEER_GONE, now)

    def _peer_error(self, datagram: bytes, now: float) -> None:
        code = _unpack_header(datagram)[1] if len(datagram) >= 4 else 0
        self.stats.error_code = code
        end = datagram.find(b"\0", 4)
        raw = datagram[4:] if end < 0 else datagram[4:end]
        self.stats.error_message = raw.decode("utf-8", "replace")[:200]
        self._finish(Outcome.PEER_ERROR, now)

    def _illegal(self, reason: str, now: float) -> None:
        self.abort(ErrorCode.ILLEGAL_OPERATION, reason, now)


@attrs.define
class LockstepPoint:
    """A lock-step sender between two ACKs, in the steady state (see
    :meth:`BlockSender.lockstep_point`): block ``block`` is in flight as ``in_flight``,
    sent once at ``sent_at``; ``staged`` is the next block's datagram, a full one."""

    block: int
    in_flight: bytes
    sent_at: float
    staged: bytes | None
    srtt: float | None
    rttvar: float
    rto: float


class BlockSender(_Engine):
    """Sends a byte stream as DATA blocks and reacts to ACKs and timeouts.

    ``read(n)`` returns up to ``n`` bytes, fewer than ``n`` only at the end of the data,
    or ``None`` when an asynchronous source has nothing yet: the caller then calls
    :meth:`resume` once it has.
    ``preamble``, when given, is a datagram sent first and acknowledged by ACK 0 (the
    server's OACK in answer to an RRQ with options). ``send_many``, when given, sends a
    list of datagrams in order at once (a window), with the same effect as ``send`` on
    each.
    """

    def __init__(
        self,
        send: Send,
        read: Callable[[int], bytes | None],
        *,
        now: float,
        blksize: int = 512,
        windowsize: int = 1,
        timer: RetransmitTimer | None = None,
        preamble: bytes | None = None,
        max_retries: int | None = None,
        give_up_after: float = 30.0,
        first_contact_retries: int = 5,
        send_many: Callable[[list[bytes]], object] | None = None,
    ) -> None:
        super().__init__(
            send,
            now=now,
            blksize=blksize,
            windowsize=windowsize,
            timer=timer,
            max_retries=max_retries,
            give_up_after=give_up_after,
            first_contact_retries=first_contact_retries,
        )
        self.read = read
        self.send_many = send_many
        # Absolute block numbers (never wrapped); the wire carries them modulo 65536.
        self._window: list[bytes] = []  # datagrams of blocks base .. base+len-1
        # Built ahead of their turn: blocks base+len(window) .. (see _stage)
        self._staged: list[bytes] = []
        self._stage_limit = max(1, min(windowsize, _STAGE_BYTES // blksize))
        self._base = 0 if preamble is not None else 1
        self._next = self._base  # next block to transmit (index into the window + base)
        self._last_block: int | None = None  # absolute number of the final (short) block
        self._rewound_at = -1  # ACK value that last caused a rewind (once per value)
        # Losses this path has been seen to have (timeouts judged real losses and not
        # found spurious later, gaps the peer reported): see losses_seen.
        self._losses = 0
        self._reading_stalled = False  # read() said "not yet": wait for resume()
        self._lockstep = windowsize == 1
        # When each window block was first sent; -1.0 once it has been sent again, since
        # an ACK for a retransmitted block cannot be timed (Karn's rule).
        self._sent_at: list[float] = []
        # Lock-step: the block a timeout retransmitted, when it was first sent, and when
        # its first ACK came (see _check_spurious).
        self._suspect_block = -1
        self._suspect_sent_at = 0.0
        self._suspect_resent_at = 0.0
        self._suspect_acked_at: float | None = None
        self._suspect_lost = False  # _check_lost counted it as a loss
        if preamble is not None:
            self._window.append(preamble)  # alone: data waits for its ACK 0
        else:
            self._fill_window()
        self._transmit(now)
        self._stage()

    def _read_block(self, block: int) -> bytes | None:
        """The DATA datagram of ``block`` (the next one to read), or ``None`` for now."""
        payload = self.read(self.blksize)
        if payload is None:
            self._reading_stalled = True  # the source has nothing yet: until resume()
            return None
        if len(payload) < self.blksize:
            self._last_block = block
        return _pack_header(3, block & 0xFFFF) + payload

    def _fill_window(self) -> None:
        window = self._window
        staged = self._staged
        while len(window) < self.windowsize:
            if staged:
                window.append(staged.pop(0))
                continue
            if self._last_block is not None:
                break
            datagram = self._read_block(self._base + len(window))
            if datagram is None:
                break
            window.append(datagram)

    def _stage(self) -> None:
        """Build the blocks after the window now, while the peer works on the window.

        Answering an ACK is then a send of ready datagrams: reading and packing are off
        the round trip that paces a transfer.
        """
        staged = self._staged
        while (
            len(staged) < self._stage_limit
            and self._last_block is None
            and self.outcome is None
            and not self._reading_stalled
        ):
            datagram = self._read_block(self._base + len(self._window) + len(staged))
            if datagram is None:
                return
            staged.append(datagram)

    def _transmit(self, now: float) -> None:
        """Send every block from ``_next`` to the end of the window; arm the timer."""
        if self.outcome is not None:
            return  # e.g. the source failed while the window was being filled
        window = self._window
        base = self._base
        send = self.send
        sent_at = self._sent_at
        first_new = base + len(sent_at)
        first = self._next - base
        # One datagram per send, or per message of one sendmmsg (send_many): measured
        # against atftp (windowsize 16 and 64), a window sent with UDP segmentation
        # offload (one sendmsg, one large datagram cut by the kernel) arrived later.
        send_many = self.send_many
        if send_many is not None and len(window) - first > 1:
            send_many(window[first:])
        else:
            for index in range(first, len(window)):
                send(window[index])
        for index in range(self._next - base, min(first_new - base, len(window))):
            sent_at[index] = -1.0
        sent_at.extend([now] * (len(window) - len(sent_at)))
        self._next = base + len(window)
        self.deadline = now + self.timer.rto

    def on_datagram(self, datagram: bytes, now: float) -> None:
        """A datagram from the peer (already checked to come from its address and port)."""
        if self.outcome is not None:
            return
        if len(datagram) >= 4:
            opcode, number = _unpack_header(datagram)
            if opcode == 4:
                self.on_ack(number, now)
                return
            if opcode == 5:
                self._peer_error(datagram, now)
                return
            if opcode == 6:
                # A client's upload: the server repeated its OACK, i.e. its "ACK 0".
                self.on_ack(0, now)
                return
        self._illegal("expected ACK", now)

    def on_ack(self, wire_block: int, now: float) -> None:
        """The peer acknowledged ``wire_block`` (0..65535)."""
        base = self._base
        # The acknowledged block as an absolute number: the one in [base-1, base-1+65535]
        # with these low 16 bits. Anything beyond what was sent is stale or bogus.
        acked = base - 1 + ((wire_block - (base - 1)) & 0xFFFF)
        sent_end = self._next - 1
        if acked > sent_end:
            return
        if acked == sent_end == base and self._lockstep and self._staged:
            # The common case of RFC 1350 lock-step, kept short: it runs once per block.
            self._next_lockstep_block(base, self._staged.pop(0), now)
            return
        if acked >= base:
            done = acked - base + 1
            sent_at = self._sent_at[done - 1]
            if acked == self._suspect_block and self._suspect_acked_at is None:
                self._suspect_acked_at = now
                self._check_lost(now)
            # Time only ACKs the receiver sends at once: the one for the last block sent.
            # A partial ACK may have waited for the receiver's own timer.
            if sent_at >= 0 and acked == sent_end:
                self.timer.sample(now - sent_at)
            else:
                self.timer.progressed()
            if self.windowsize > 1 and min(self._sent_at[:done]) < 0:
                # Blocks up to ``acked`` went out twice (a timeout or a rewind): copies
                # the peer did not need reach it after this ACK, and a peer that answers
                # a duplicate with its last in-order block (atftp does) sends this ACK
                # again. That echo is no gap report: a rewind for it would send the next
                # window twice, whose copies would draw the next echo, and so on for
                # every window after. A real gap right here waits for the timer.
                self._rewound_at = acked
            del self._sent_at[:done]
            acknowledged = self._window[:done]
            del self._window[:done]
            if base == 0:  # the preamble (OACK) is not data
                acknowledged = acknowledged[1:]
            self.stats.blocks += len(acknowledged)
            self.stats.bytes += sum(map(len, acknowledged)) - 4 * len(acknowledged)
            self._base = base = acked + 1
            self._progress(now)
            if self._last_block is not None and acked >= self._last_block:
                self._finish(Outcome.COMPLETE, now)
                return
            if acked < sent_end and self.windowsize > 1:
                # A partial ACK in windowed mode: the receiver saw a gap after ``acked``.
                self._rewind(acked, base)
            self._fill_window()
            self._transmit(now)
            self._stage()
        elif self.windowsize > 1 and acked < sent_end and acked != self._rewound_at:
            # No progress, blocks outstanding: the first block of the window was lost.
            # Rewind once per ACK value, so duplicated ACKs cannot multiply traffic.
            self._rewind(acked, base)
            self._transmit(now)
        elif acked == self._suspect_block:
            # Lock-step duplicate ACK: never a retransmission (Sorcerer's Apprentice), but
            # perhaps a sign that the last timeout was spurious.
            self._check_spurious(now)

    def _check_lost(self, now: float) -> None:
        """The first ACK of the block a timeout resent came ``now``. Within about a round
        trip of the copy, it answers the copy: the first was lost (or its ACK was), and
        the floor only delayed the recovery (:meth:`RetransmitTimer.lower_floor`). Had the
        first copy been only late, its ACK could come any time after the copy went out,
        and a peer that answers duplicates repeats it at once: :meth:`_check_spurious`
        then raises the floor again, above where it was."""
        srtt = self.timer.srtt
        round_trip = _PROMPT_ANSWER if srtt is None else max(2 * srtt, _PROMPT_ANSWER)
        if now - self._suspect_resent_at <= round_trip:
            self._losses += 1
            self._suspect_lost = True
            self.timer.lower_floor()

    def _check_spurious(self, now: float) -> None:
        """A second ACK of the block a timeout retransmitted: the peer got that block
        twice, so the first copy was not lost, only late, and its first ACK took
        ``acked_at - sent_at``. On a CPU shared by many transfers such delays come and
        go, and every spurious timeout costs packets and work on both sides: the timer
        learns the delay (:meth:`RetransmitTimer.raise_floor`). A duplicate that comes
        later than that delay again, or later than :data:`_REPEAT_WITHIN`, is more likely
        the peer's own timer, and is ignored.
        """
        acked_at = self._suspect_acked_at
        if acked_at is not None:
            delay = acked_at - self._suspect_sent_at
            if now - acked_at <= min(delay, _REPEAT_WITHIN):
                self.timer.raise_floor(delay)
                if self._suspect_lost:  # it was not a loss after all
                    self._losses -= 1
        self._suspect_block = -1
        self._suspect_acked_at = None

    def _next_lockstep_block(self, acked: int, datagram: bytes, now: float) -> None:
        """Windowsize 1, block ``acked`` (not the last) acknowledged and the next one's
        ``datagram`` staged: send it. Same effect as the general path of :meth:`on_ack`."""
        sent_at = self._sent_at[0]
        if sent_at >= 0:
            self.timer.sample(now - sent_at)
        else:
            self.timer.progressed()
        stats = self.stats
        if acked:  # block 0 is the OACK, not data
            stats.blocks += 1
            stats.bytes += self.blksize  # every block but the last is full
        self._retries = 0
        self._last_progress = now
        self._peer_proven = True
        block = acked + 1
        self._base = block
        self._next = block + 1
        self._window[0] = datagram
        self._sent_at[0] = now
        self.send(datagram)
        self.deadline = now + self.timer.rto
        if self._last_block is None and not self._reading_stalled:
            following = self._read_block(block + 1)
            if following is not None:
                self._staged.append(following)

    @property
    def losses_seen(self) -> bool:
        """Whether this path has been seen to lose blocks or ACKs: a timeout that was a
        real loss (and not found spurious after all), or a gap the peer reported. Callers
        then wait for the next timeout with a precise timer
        (netsvc.tftp.lockstep.PumpState.precise_wait)."""
        return self._losses > 0

    def lockstep_point(self) -> LockstepPoint | None:
        """Where a lock-step transfer stands, when it is in the steady state that a caller
        may run itself (:mod:`netsvc.tftp.lockstep`): one data block in flight, sent
        once, and the next one staged, full (not the last). ``None`` otherwise."""
        if not (
            self._lockstep
            and self.outcome is None
            and self._base >= 1
            and len(self._window) == 1
            and self._next == self._base + 1
            and self._sent_at[0] >= 0
            and len(self._staged) == 1
            and len(self._staged[0]) == 4 + self.blksize
            and self._last_block is None
            and not self._reading_stalled
        ):
            return None
        timer = self.timer
        return LockstepPoint(
            self._base,
            self._window[0],
            self._sent_at[0],
            self._staged[0],
            timer.srtt,
            timer.rttvar,
            timer.rto,
        )

    def lockstep_moved(self, point: LockstepPoint, acked: int, last_ack_at: float) -> None:
        """The caller ran the steady state from :meth:`lockstep_point` itself: ``acked``
        more blocks were acknowledged, each timed (the timer's new state is in ``point``),
        the last at ``last_ack_at``, and ``point`` is where the transfer stands now. With
        ``point.staged`` ``None`` the next block is read here, from where the caller's
        reading stopped. Same effect as :meth:`on_ack` for each of those ACKs."""
        if acked:
            timer = self.timer
            timer.srtt = point.srtt
            timer.rttvar = point.rttvar
            timer.rto = point.rto
            timer.backoff = 1
            self.stats.blocks += acked
            self.stats.bytes += acked * self.blksize
            self._retries = 0
            self._last_progress = last_ack_at
            self._peer_proven = True
        block = point.block
        self._base = block
        self._next = block + 1
        self._window[0] = point.in_flight
        self._sent_at[0] = point.sent_at
        self.deadline = point.sent_at + self.timer.rto
        self._staged.clear()
        if point.staged is not None:
            self._staged.append(point.staged)
        else:
            following = self._read_block(block + 1)
            if following is not None:
                self._staged.append(following)

    def _rewind(self, acked: int, base: int) -> None:
        self._rewound_at = acked
        self._losses += 1
        self.stats.retransmits += self._next - base
        self._next = base

    def resume(self, now: float) -> None:
        """The source has data again: fill the window and send what is new."""
        self._reading_stalled = False
        if self.outcome is None:
            self._fill_window()
            if self._next < self._base + len(self._window):
                self._transmit(now)
            self._stage()

    def on_timeout(self, now: float) -> None:
        """The deadline passed: retransmit the window from its first block, or give up."""
        if self.outcome is not None or self.deadline is None or now < self.deadline:
            return
        if not self._window:  # waiting for our own source, not for the peer
            if now - self._last_progress >= self.give_up_after:
                self.abort(ErrorCode.NOT_DEFINED, "data source stalled", now)
            else:
                self.deadline = now + self.timer.rto
            return
        if self._should_give_up(now):
            self.stats.error_message = "timed out waiting for ACK"
            self.send(encode_error(ErrorCode.NOT_DEFINED, "timed out"))
            self._finish(Outcome.TIMED_OUT, now)
            return
        self.timer.timed_out()
        self.stats.retransmits += self._next - self._base
        self._rewound_at = -1
        self._next = self._base
        if self._lockstep:
            if self._sent_at[0] >= 0:  # its first retransmission: it may be only late
                self._suspect_block = self._base
                self._suspect_sent_at = self._sent_at[0]
                self._suspect_resent_at = now
                self._suspect_acked_at = None
                self._suspect_lost = False
            else:
                self._suspect_block = -1  # sent three times or more: no telling
            self._send_next_block_too()
        self._transmit(now)

    def _send_next_block_too(self) -> None:
        """Lock-step timeout: resend what is outstanding and one new block behind it.

        When our block N was lost, the peer takes N and then N+1 in order. When its ACK
        of N was lost, the peer drops the duplicate N, but N+1 is the block it waits for,
        so it answers at once. Without N+1 that case waits on the peer's own timer, and
        some clients (busybox) never re-acknowledge a duplicate block and only repeat
        their ACK after 100 ms of silence, which every retransmission of ours restarts:
        about a quarter of a second per lost ACK. Each further timeout adds one more new
        block (up to :data:`_PROBE_BLOCKS` in flight), so even a second lost ACK is answered
        by a block the peer has not seen. Peers discard blocks they are not waiting for
        (RFC 1350), so this costs at most a few wasted datagrams per timeout. Not before
        the peer has answered once: it may be a spoofed address (``first_contact_retries``).
        """
        window = self._window
        if len(window) >= _PROBE_BLOCKS or self._base == 0 or not self._peer_proven:
            return  # enough in flight, the OACK, or nobody has answered yet
        if self._staged:
            window.append(self._staged.pop(0))
        elif self._last_block is None:
            datagram = self._read_block(self._base + len(window))
            if datagram is not None:
                window.append(datagram)


class BlockReceiver(_Engine):
    """Receives DATA blocks, hands them to ``write`` in order, and acknowledges them.

    Once data flows, recovery is driven by the sender's timer: the receiver repeats an ACK
    when a duplicate block shows the sender missed it, acknowledges a partial window when
    the rest of it does not come, and otherwise only watches the ``give_up_after``
    deadline.

    ``write(payload)`` returns ``True`` when the bytes are written, ``False`` when the
    write will finish later: the engine then waits for :meth:`write_done` before it
    acknowledges, and drops DATA meanwhile (the sender retransmits). ``preamble`` is the
    datagram that asks for the first block, sent at once and repeated on timeout: ACK 0 or
    an OACK (server, WRQ), ACK 0 (client, after an OACK), or ``None`` when block 1 has
    already arrived and is about to be fed in (client, RRQ without options).

    ``repeat_ack``: in lock-step, also repeat the last ACK when no block comes within the
    timer, so a sender with a slow timer recovers after one of ours (the server's
    uploads: curl waits seconds). A sender that resends its block when an old ACK comes
    (curl does) then sends that block twice if it was only late; the duplicate that our
    repeat caused is not acknowledged again, or each ACK would draw another duplicate
    (the Sorcerer's Apprentice, on the sender's side) for the rest of the transfer.
    """

    def __init__(
        self,
        send: Send,
        write: Callable[[bytes], bool],
        *,
        now: float,
        preamble: bytes | None,
        blksize: int = 512,
        windowsize: int = 1,
        timer: RetransmitTimer | None = None,
        max_retries: int | None = None,
        give_up_after: float = 30.0,
        first_contact_retries: int = 5,
        dally: float | None = None,
        max_bytes: int | None = None,
        repeat_ack: bool = False,
    ) -> None:
        super().__init__(
            send,
            now=now,
            blksize=blksize,
            windowsize=windowsize,
            timer=timer,
            max_retries=max_retries,
            give_up_after=give_up_after,
            first_contact_retries=first_contact_retries,
        )
        self.write = write
        self.max_bytes = max_bytes
        self._dally = dally
        self._dally_until = 0.0  # when a dally after the final ACK ends
        self._repeat_ack = repeat_ack and windowsize == 1
        self._repeats = 0  # ACK repeats since the last block that arrived in order
        # The block a repeated ACK asks for again: its duplicate is our repeat's echo.
        self._echo_wire = -1
        self._expected = 1  # wire number of the next in-order block
        self._wraps_to_one = False
        self._last_ack = preamble or b""  # what we repeat on timeout and for duplicates
        # What our timer repeats while nothing has come. Not an OACK (a server's answer
        # to a write request): curl takes every OACK as the go-ahead for block 1 and
        # reads the next block of its file for it, so a repeat after its DATA 1 was lost
        # shifted the whole upload by a block (stored short and wrong; curl exits 0).
        # ACK 0 instead where it frames the data as the OACK does (blksize 512, no
        # window): a client that has the OACK takes it as an old ACK and resends DATA 1,
        # one that lost the OACK goes ahead without options. Otherwise the timer stays
        # silent and the client's own retransmission drives it; the OACK goes out again
        # when the client repeats its request (request_repeated).
        self._timer_preamble: bytes | None = self._last_ack or None
        if self._last_ack.startswith(b"\x00\x06"):
            plain = blksize == 512 and windowsize == 1
            self._timer_preamble = _pack_header(4, 0) if plain else None
            if not plain:
                # Silent, it cannot flood a spoofed address: no first-contact limit,
                # only the idle timeout (clients repeat a request after seconds).
                self.first_contact_retries = math.inf
        self._last_acked_wire: int | None = None
        self._since_ack = 0  # in-order blocks since our last ACK
        self._gap_reported = False
        self._writing = False
        self._final = False  # the short block has been written
        self._ack_sent_at = now
        self._ack_retransmitted = False
        self._pending_wire = 0  # block whose deferred write is in progress
        #: True once the final block is written and acknowledged: the data is complete
        #: even while the engine dallies for a retransmitted last block.
        self.complete = False
        if preamble is not None:
            self.send(preamble)
        self.deadline = now + self.timer.rto

    def _next_wire(self, wire: int) -> int:
        following = (wire + 1) & 0xFFFF
        if following == 0 and self._wraps_to_one:
            return 1
        return following

    def on_datagram(self, datagram: bytes, now: float) -> None:
        """A datagram from the peer (already checked to come from its address and port)."""
        if self.outcome is not None:
            return
        if len(datagram) >= 4:
            opcode, number = _unpack_header(datagram)
            if opcode == 3:
                self.on_data(number, datagram, now)
                return
            if opcode == 5:
                self._peer_error(datagram, now)
                return
            if opcode == 6:
                # A client's download: the server repeated its OACK, so our ACK 0 was lost.
                if self.stats.blocks == 0 and self._last_ack:
                    self.send(self._last_ack)
                return
        self._illegal("expected DATA", now)

    def on_data(self, wire: int, datagram: bytes, now: float) -> None:
        """DATA ``wire`` arrived; ``datagram`` is the whole packet (payload from byte 4)."""
        if self._final:
            if wire == self._last_acked_wire:
                self.send(self._last_ack)  # our final ACK was lost: say it again
            return
        if self._writing:
            return  # not acknowledged yet, so the sender will send it again
        expected = self._expected
        if wire != expected:
            if expected == 0 and wire == 1 and self._last_acked_wire == 0xFFFF:
                # The sender wrapped 65535 -> 1 rather than 0; follow it from here on.
                self._wraps_to_one = True
                self._expected = expected = 1
            else:
                self._out_of_order(wire, now)
                return
        size = len(datagram) - 4
        if size > self.blksize:
            self._illegal(f"DATA block larger than blksize {self.blksize}", now)
            return
        if self.max_bytes is not None and self.stats.bytes + size > self.max_bytes:
            self.abort(ErrorCode.DISK_FULL, "file exceeds the size limit", now)
            return
        if self._since_ack == 0 and not self._ack_retransmitted and not self._gap_reported:
            elapsed = now - self._ack_sent_at
            # Later than our own timeout, this block is likely a retransmission (Karn).
            if elapsed < self.timer.rto:
                self.timer.sample(elapsed)
        self._progress(now)
        self._gap_reported = False
        self._final = size < self.blksize
        self.stats.blocks += 1
        self.stats.bytes += size
        if wire != self._echo_wire:
            self._echo_wire = -1  # a block the repeat did not ask for: no echo expected
        self._repeats = 0
        self._expected = self._next_wire(wire)
        self._since_ack += 1
        self._pending_wire = wire
        if self.write(datagram[4:]):
            self._written(wire, now)
        else:
            self._writing = True

    def write_done(self, now: float) -> None:
        """The sink finished the write it deferred; acknowledge the block now."""
        if self._writing and self.outcome is None:
            self._writing = False
            self._written(self._pending_wire, now)

    def _written(self, wire: int, now: float) -> None:
        if self._final or self._since_ack >= self.windowsize:
            self._acknowledge(wire, now)
        else:
            self.deadline = now + self.timer.rto
        if self._final:
            self.complete = True
            if self._dally:
                self._dally_until = now + self._dally
                # With repeat_ack, the final ACK is repeated a few times as well: a client
                # that lost it may not ask again within the dally (curl waits 5 s).
                wake = now + self.timer.rto if self._repeat_ack else self._dally_until
                self.deadline = min(wake, self._dally_until)
            else:
                self._finish(Outcome.COMPLETE, now)

    def _acknowledge(self, wire: int, now: float) -> None:
        self._last_ack = _pack_header(4, wire)
        self._last_acked_wire = wire
        self._since_ack = 0
        self._ack_sent_at = now
        self._ack_retransmitted = False
        self.send(self._last_ack)
        self.deadline = now + self.timer.rto

    def _out_of_order(self, wire: int, now: float) -> None:
        last = self._last_in_order_wire()
        if wire == self._echo_wire:
            self._echo_wire = -1  # sent again because we repeated an ACK: not a lost ACK
            return
        if wire == last or wire == self._last_acked_wire:
            # A duplicate of what we acknowledged last: our ACK was lost, repeat it.
            if self._since_ack == 0:
                self.send(self._last_ack)
                self._ack_retransmitted = True
            return
        ahead = (wire - self._expected) & 0xFFFF
        if self.windowsize > 1 and ahead < self.windowsize and not self._gap_reported:
            # A gap: acknowledge what we have so the sender goes back to the hole, once.
            self._gap_reported = True
            if last is None:
                if self._last_ack:
                    self.send(self._last_ack)  # nothing yet: repeat the preamble
            else:
                self._acknowledge(last, now)

    def _last_in_order_wire(self) -> int | None:
        if self.stats.blocks == 0:
            return None
        previous = (self._expected - 1) & 0xFFFF
        if previous == 0 and self._wraps_to_one:
            return 0xFFFF
        return previous

    def request_repeated(self) -> None:
        """The peer sent its request again: while no block has come, our answer (the
        preamble) has not reached it, so it goes out again."""
        if self.outcome is None and self.stats.blocks == 0 and self._last_ack:
            self._resend(self._last_ack)

    def _repeat_last_ack(self) -> None:
        """One of the ``repeat_ack`` repeats (at most :data:`_ACK_REPEATS` per block)."""
        self._resend(self._last_ack)
        self._repeats += 1

    def _resend(self, datagram: bytes) -> None:
        """Send an ACK (or the preamble) again: a retransmission, never timed (Karn)."""
        self.send(datagram)
        self._ack_retransmitted = True
        self.stats.retransmits += 1

    def peer_unreachable(self, now: float, why: str = _UNREACHABLE) -> None:
        if self._final and not self._writing:
            # Dallying: the sender had our final ACK and left, as it may.
            self._finish(Outcome.COMPLETE, now)
        else:
            super().peer_unreachable(now, why)

    def on_timeout(self, now: float) -> None:
        """The deadline passed: repeat our last ACK (or request), finish dallying, or give up."""
        if self.outcome is not None or self.deadline is None or now < self.deadline:
            return
        if self._final and not self._writing:
            if now >= self._dally_until:
                self._finish(Outcome.COMPLETE, now)
            elif self._repeat_ack and self._repeats < _ACK_REPEATS:
                self._repeat_last_ack()
                self.timer.timed_out()
                self.deadline = min(now + self.timer.rto, self._dally_until)
            else:
                self.deadline = self._dally_until
            return
        if self._should_give_up(now):
            self.stats.error_message = "timed out waiting for DATA"
            self.send(encode_error(ErrorCode.NOT_DEFINED, "timed out"))
            self._finish(Outcome.TIMED_OUT, now)
            return
        self.timer.timed_out()
        last = self._last_in_order_wire()
        if self._writing:
            pass  # the ACK waits for the write
        elif last is None:
            # Nothing arrived yet: our ACK 0 / OACK / request may have been lost.
            if self._timer_preamble is not None:
                self._resend(self._timer_preamble)
        elif self._since_ack:
            # Part of a window arrived, then nothing: say where we are (go-back-N).
            self._acknowledge(last, now)
            self._ack_retransmitted = True
            self.stats.retransmits += 1
        elif self._repeat_ack and self._repeats < _ACK_REPEATS:
            # Lock-step, our ACK or the next block lost: ask for it now, not after the
            # sender's timer (see repeat_ack).
            self._repeat_last_ack()
            self._echo_wire = self._expected
        # Otherwise the sender's timer drives recovery: repeating an ACK it already has
        # would only be timed by it as a (much too long) round trip.
        self.deadline = now + self.timer.rto

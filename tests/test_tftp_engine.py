"""The sans-I/O engines over a simulated link: loss, duplication, reordering, delay."""

from __future__ import annotations

import heapq
import random
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsvc.tftp.engine import BlockReceiver, BlockSender, Outcome, RetransmitTimer
from netsvc.tftp.packets import ErrorCode, encode_ack, encode_data


class Link:
    """Two endpoints, a clock and a lossy network between them (deterministic by seed)."""

    def __init__(
        self,
        seed: int = 0,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        delay: float = 0.001,
    ) -> None:
        self.random = random.Random(seed)
        self.loss, self.duplicate, self.reorder, self.delay = loss, duplicate, reorder, delay
        self.now = 0.0
        self.queue: list[tuple[float, int, str, bytes]] = []
        self.sequence = 0
        self.sent = {"a": 0, "b": 0}

    def sender_for(self, source: str) -> Callable[[bytes], None]:
        destination = "b" if source == "a" else "a"

        def send(datagram: bytes) -> None:
            self.sent[source] += 1
            copies = 2 if self.random.random() < self.duplicate else 1
            for _ in range(copies):
                if self.random.random() < self.loss:
                    continue
                delay = self.delay
                if self.random.random() < self.reorder:
                    delay += self.random.uniform(0, 4 * self.delay)
                self.sequence += 1
                heapq.heappush(self.queue, (self.now + delay, self.sequence, destination, datagram))

        return send

    def run(self, a: Any, b: Any, limit: float = 7200.0, max_events: int = 5_000_000) -> None:
        """Deliver datagrams and fire deadlines until both ends are done (bounded)."""
        engines = {"a": a, "b": b}
        for _ in range(max_events):
            if a.done and b.done:
                return
            deadlines = [
                (e.deadline, name) for name, e in engines.items() if e.deadline is not None
            ]
            next_timer = min(deadlines) if deadlines else (float("inf"), "")
            if self.queue and self.queue[0][0] <= next_timer[0]:
                when, _, destination, datagram = heapq.heappop(self.queue)
                self.now = max(self.now, when)
                engines[destination].on_datagram(datagram, self.now)
            elif next_timer[1]:
                self.now = max(self.now, next_timer[0])
                engines[next_timer[1]].on_timeout(self.now)
            else:
                return
            if self.now > limit:
                raise AssertionError("transfer did not end within the simulated time limit")
        raise AssertionError("too many events")


def writes_into(buffer: bytearray) -> Callable[[bytes], bool]:
    """A receiver's ``write`` that appends each payload to ``buffer``, done at once."""

    def write(payload: bytes) -> bool:
        buffer.extend(payload)
        return True

    return write


def transfer(
    data: bytes,
    link: Link,
    blksize: int = 512,
    windowsize: int = 1,
    dally: float | None = 1.0,
    **receiver_kwargs: Any,
) -> tuple[BlockSender, BlockReceiver, bytes]:
    """Sender "a" streams ``data`` to receiver "b" (a server answering a WRQ with ACK 0)."""
    received = bytearray()
    offset = 0

    def read(n: int) -> bytes:
        nonlocal offset
        chunk = data[offset : offset + n]
        offset += len(chunk)
        return chunk

    receiver = BlockReceiver(
        link.sender_for("b"), writes_into(received), now=0.0, preamble=encode_ack(0),
        blksize=blksize, windowsize=windowsize, dally=dally, **receiver_kwargs,
    )
    # The sender starts when ACK 0 arrives: model it as starting after one link delay.
    link.queue.clear()
    sender = BlockSender(
        link.sender_for("a"), read, now=0.0, blksize=blksize, windowsize=windowsize
    )
    link.run(sender, receiver)
    return sender, receiver, bytes(received)


SIZES = [0, 1, 511, 512, 513, 512 * 7, 512 * 7 + 3, 40_000]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("windowsize", [1, 4, 16, 64])
def test_clean_link_transfers_every_size(size: int, windowsize: int) -> None:
    data = random.Random(size).randbytes(size)
    sender, receiver, received = transfer(data, Link(), windowsize=windowsize)
    assert received == data
    assert sender.outcome is Outcome.COMPLETE and receiver.outcome is Outcome.COMPLETE
    assert sender.stats.bytes == size == receiver.stats.bytes
    assert sender.stats.blocks == size // 512 + 1
    assert sender.stats.retransmits == 0


@pytest.mark.parametrize("loss", [0.1, 0.2, 0.3])
@pytest.mark.parametrize("windowsize", [1, 4, 16, 64])
@pytest.mark.parametrize("size", [0, 1, 511, 512, 512 * 20, 100_000])
def test_lossy_duplicating_reordering_link_gives_identical_bytes(
    loss: float, windowsize: int, size: int
) -> None:
    data = random.Random(size).randbytes(size)
    link = Link(seed=int(loss * 100) + windowsize, loss=loss, duplicate=0.05, reorder=0.1)
    sender, receiver, received = transfer(data, link, windowsize=windowsize, dally=5.0)
    assert receiver.complete and received == data
    # The receiver's last ACK may be lost through its whole dally; then the sender cannot
    # know the transfer succeeded (TFTP has no final handshake) and times out.
    assert sender.outcome in (Outcome.COMPLETE, Outcome.TIMED_OUT)


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(0, 2000),
    blksize=st.sampled_from([8, 9, 64, 512]),
    windowsize=st.sampled_from([1, 2, 3, 8]),
    loss=st.floats(0, 0.3),
    duplicate=st.floats(0, 0.3),
    reorder=st.floats(0, 0.5),
)
def test_any_link_ends_with_identical_bytes_or_a_clean_error(
    seed: int, size: int, blksize: int, windowsize: int, loss: float, duplicate: float,
    reorder: float,
) -> None:
    data = random.Random(seed).randbytes(size)
    link = Link(seed, loss, duplicate, reorder)
    sender, receiver, received = transfer(data, link, blksize=blksize, windowsize=windowsize)
    assert sender.done and receiver.done
    if receiver.complete:
        assert received == data
    else:
        assert receiver.outcome in (Outcome.TIMED_OUT, Outcome.PEER_ERROR)
    if sender.outcome is Outcome.COMPLETE:
        assert receiver.complete


def test_rollover_past_65535_with_blksize_8() -> None:
    size = 600 * 1024  # 76,800 blocks of 8 bytes: wraps once
    data = random.Random(1).randbytes(size)
    sender, _receiver, received = transfer(data, Link(), blksize=8, windowsize=16)
    assert received == data and sender.stats.blocks == size // 8 + 1


def test_rollover_under_loss_lockstep() -> None:
    data = random.Random(2).randbytes(530 * 1024)
    link = Link(seed=3, loss=0.05)
    _, receiver, received = transfer(data, link, blksize=8)
    assert receiver.complete and received == data


def test_receiver_follows_a_sender_that_wraps_to_one() -> None:
    sent: list[bytes] = []
    received = bytearray()
    receiver = BlockReceiver(
        sent.append, writes_into(received), now=0.0, preamble=encode_ack(0), blksize=8,
    )
    block = 1
    for absolute in range(1, 65540):
        receiver.on_datagram(encode_data(block, b"%08d" % (absolute % 10**8)), 0.0)
        block = block + 1 if block < 65535 else 1  # wraps to 1, never 0
    receiver.on_datagram(encode_data(block, b""), 0.0)
    assert receiver.complete
    assert len(received) == 65539 * 8
    assert sent[-1] == encode_ack(block)


def test_lockstep_sender_ignores_duplicate_acks_sorcerers_apprentice() -> None:
    sent: list[bytes] = []
    chunks = iter([b"a" * 512, b"b" * 512, b"c"])
    sender = BlockSender(sent.append, lambda n: next(chunks), now=0.0)
    assert sent == [encode_data(1, b"a" * 512)]
    sender.on_ack(1, 0.01)
    sender.on_ack(1, 0.02)  # the duplicate: must not resend block 2
    sender.on_ack(1, 0.03)
    assert sent == [encode_data(1, b"a" * 512), encode_data(2, b"b" * 512)]


def _lockstep_after_samples() -> tuple[BlockSender, list[bytes]]:
    """A lock-step sender of 10 full blocks whose first 3 ACKs came after 1 ms each:
    its timer is at its floor (5 ms), block 4 in flight since t=0.003."""
    sent: list[bytes] = []
    data = iter([bytes(512)] * 10 + [b""])
    timer = RetransmitTimer(initial=1.0, minimum=0.005, maximum=2.0)
    sender = BlockSender(sent.append, lambda n: next(data), now=0.0, timer=timer)
    for block in (1, 2, 3):
        sender.on_ack(block, block * 0.001)
    assert timer.rto == timer.minimum == 0.005
    return sender, sent


def test_a_late_ack_after_a_timeout_raises_the_timers_floor() -> None:
    sender, sent = _lockstep_after_samples()
    sender.on_timeout(0.008)  # block 4 was only late: the peer will get it twice
    assert [struct.unpack("!HH", d[:4])[1] for d in sent[-2:]] == [4, 5]
    sender.on_ack(4, 0.023)  # the ACK of the first copy, 20 ms after it was sent
    sender.on_ack(4, 0.024)  # and of the second: the timeout was spurious
    assert sender.timer.minimum == pytest.approx(0.040)  # twice the delay
    assert sender.timer.rto >= 0.040
    assert sender.outcome is None and len(sent) == 6  # no packet for the duplicate


@pytest.mark.parametrize(
    "acks",
    [
        [(4, 0.023)],  # a real loss: the block arrived once, one ACK
        [(4, 0.023), (4, 0.060)],  # a duplicate long after: the peer's own timer
        [(3, 0.009)],  # a duplicate of an older block
    ],
    ids=["lost", "peer-timer", "older-block"],
)
def test_other_acks_after_a_timeout_leave_the_floor(acks: list[tuple[int, float]]) -> None:
    sender, _ = _lockstep_after_samples()
    sender.on_timeout(0.008)
    for block, when in acks:
        sender.on_ack(block, when)
    assert sender.timer.minimum == 0.005


def test_a_repeat_from_the_peers_own_timer_leaves_the_floor_after_a_long_delay() -> None:
    # busybox never answers a duplicate block: it repeats its last ACK after 100 ms of
    # silence. Here the timer starts from a 150 ms floor (one a host's earlier download
    # taught, netsvc.tftp.floors), block 2 is lost, the timeout resends it with block 3
    # behind it, and block 3 is lost too: busybox's repeat of ACK 2 comes 100 ms after
    # its first, within the 150 ms "delay". Taken for a late first copy, it doubled the
    # floor, the next such loss doubled it again, up to 2 s: 1 MiB through 10 % loss
    # then took minutes (15 in 400 in bench/tftp_busybox_model.py; CI hung twice).
    sent: list[bytes] = []
    data = iter([bytes(512)] * 10 + [b""])
    timer = RetransmitTimer(initial=1.0, minimum=0.15, maximum=2.0)
    sender = BlockSender(sent.append, lambda n: next(data), now=0.0, timer=timer)
    sender.on_ack(1, 0.001)  # block 2 goes out at 0.001 and is lost
    sender.on_timeout(0.151)
    assert [struct.unpack("!HH", d[:4])[1] for d in sent[-2:]] == [2, 3]
    sender.on_ack(2, 0.152)  # the copy arrived; block 3 is lost
    sender.on_ack(2, 0.252)  # busybox's own timer
    assert timer.minimum == 0.15


def _lockstep_from_a_learned_floor() -> tuple[BlockSender, RetransmitTimer]:
    """A lock-step sender whose timer starts from a 160 ms floor another download learned
    (its own lowest is 5 ms); block 1 acknowledged after 1 ms, block 2 in flight since
    t=0.001."""
    data = iter([bytes(512)] * 20 + [b""])
    timer = RetransmitTimer(initial=1.0, minimum=0.16, maximum=2.0, lowest=0.005)
    sender = BlockSender(lambda datagram: None, lambda n: next(data), now=0.0, timer=timer)
    sender.on_ack(1, 0.001)
    return sender, timer


def test_a_real_loss_halves_a_learned_floor() -> None:
    sender, timer = _lockstep_from_a_learned_floor()
    sender.on_timeout(0.161)  # block 2 was lost
    sender.on_ack(2, 0.1612)  # the copy's ACK, a round trip after it went out
    assert timer.minimum == pytest.approx(0.08)
    for block in range(3, 9):  # each further loss halves it again, down to its lowest
        now = sender.deadline
        assert now is not None
        sender.on_timeout(now)
        sender.on_ack(block, now + 0.0002)
    assert timer.minimum == 0.005
    assert sender.outcome is None


def test_a_real_loss_is_a_loss_seen_and_a_late_ack_is_not() -> None:
    sender, _ = _lockstep_from_a_learned_floor()
    sender.on_timeout(0.161)
    sender.on_ack(2, 0.170)  # 9 ms after the copy: the first copy's ACK, late
    assert not sender.losses_seen
    now = sender.deadline
    assert now is not None
    sender.on_timeout(now)
    sender.on_ack(3, now + 0.0002)  # the copy's ACK, a round trip after it went out
    assert sender.losses_seen


def test_an_ack_long_after_the_copy_leaves_the_floor() -> None:
    sender, timer = _lockstep_from_a_learned_floor()
    sender.on_timeout(0.161)
    sender.on_ack(2, 0.170)  # 9 ms after the copy: the first copy's, late
    assert timer.minimum == 0.16


def test_a_late_block_answered_twice_raises_the_floor_again() -> None:
    sender, timer = _lockstep_from_a_learned_floor()
    sender.on_timeout(0.161)
    sender.on_ack(2, 0.1612)  # looks like the copy's answer: halved...
    assert sender.losses_seen
    sender.on_ack(2, 0.1613)  # ...but the peer answers the copy too: the first was late
    assert timer.minimum == pytest.approx(2 * 0.1602)
    assert not sender.losses_seen  # and nothing was lost


def test_a_block_sent_three_times_tells_nothing() -> None:
    sender, _ = _lockstep_after_samples()
    sender.on_timeout(0.008)
    sender.on_timeout(0.030)  # retransmitted again: two ACKs prove nothing about the first
    sender.on_ack(4, 0.031)
    sender.on_ack(4, 0.032)
    assert sender.timer.minimum == 0.005


def test_without_a_timeout_a_duplicate_ack_leaves_the_floor() -> None:
    sender, _ = _lockstep_after_samples()
    sender.on_ack(3, 0.004)
    sender.on_ack(4, 0.005)
    sender.on_ack(4, 0.006)
    assert sender.timer.minimum == 0.005


def test_a_window_goes_to_send_many_in_one_call() -> None:
    single: list[bytes] = []
    windows: list[list[bytes]] = []
    data = iter([bytes([n]) * 512 for n in range(1, 5)] + [b""])  # blocks 1-5
    sender = BlockSender(
        single.append, lambda n: next(data), now=0.0, windowsize=4, send_many=windows.append
    )

    def numbers(datagrams: list[bytes]) -> list[int]:
        return [struct.unpack("!HH", d[:4])[1] for d in datagrams]

    assert single == [] and [numbers(w) for w in windows] == [[1, 2, 3, 4]]
    sender.on_timeout(1.5)  # the whole window again, in one call
    assert [numbers(w) for w in windows] == [[1, 2, 3, 4]] * 2 and single == []
    sender.on_ack(4, 1.6)  # one block left: it goes through send
    assert numbers(single) == [5] and len(windows) == 2
    sender.on_ack(5, 1.7)
    assert sender.outcome is Outcome.COMPLETE


def test_lockstep_never_uses_send_many() -> None:
    windows: list[list[bytes]] = []
    sent: list[bytes] = []
    data = iter([bytes(512)] * 3 + [b""])
    sender = BlockSender(sent.append, lambda n: next(data), now=0.0, send_many=windows.append)
    for block in (1, 2, 3, 4):
        sender.on_ack(block, block * 0.001)
    assert sender.outcome is Outcome.COMPLETE and len(sent) == 4 and windows == []


def test_windowed_sender_rewinds_once_per_ack_value() -> None:
    sent: list[bytes] = []
    data = bytes(512 * 10)
    offset = 0

    def read(n: int) -> bytes:
        nonlocal offset
        chunk = data[offset : offset + n]
        offset += n
        return chunk

    sender = BlockSender(sent.append, read, now=0.0, windowsize=4)
    assert len(sent) == 4  # blocks 1-4
    assert not sender.losses_seen
    sender.on_ack(2, 0.01)  # gap after 2: go back to 3, and the window slides to 3-6
    assert sender.losses_seen
    assert [struct.unpack("!HH", d[:4])[1] for d in sent[4:]] == [3, 4, 5, 6]
    sender.on_ack(2, 0.02)  # the same ACK duplicated: nothing more
    sender.on_ack(2, 0.03)
    assert len(sent) == 8


def _block_numbers(datagrams: list[bytes]) -> list[int]:
    return [struct.unpack("!HH", d[:4])[1] for d in datagrams]


@pytest.mark.parametrize("echoes", [1, 4], ids=["one-echo", "an-echo-per-duplicate"])
def test_the_echo_of_a_resent_window_does_not_rewind_the_next(echoes: int) -> None:
    """A timeout resent window 1-4 that was only late. The peer acknowledges the first
    copy (ACK 4) and gets the window 5-8; then the copies of 1-4 reach it, and a peer
    that answers a duplicate with its last in-order block (atftp does) sends ACK 4
    again. That echo is no gap report: rewinding for it would send 5-8 twice, whose
    copies would draw ACK 8 twice, and so on: every window twice for the rest of the
    transfer, from one late ACK."""
    sent: list[bytes] = []
    data = iter([bytes([n]) * 512 for n in range(1, 13)] + [b""])  # blocks 1-13
    sender = BlockSender(sent.append, lambda n: next(data), now=0.0, windowsize=4)
    sender.on_timeout(1.5)
    sender.on_ack(4, 1.6)  # the first copy's ACK
    for _ in range(echoes):
        sender.on_ack(4, 1.61)  # the copies' echo
    sender.on_ack(8, 1.7)
    sender.on_ack(12, 1.8)
    sender.on_ack(13, 1.9)
    assert sender.outcome is Outcome.COMPLETE
    assert _block_numbers(sent) == [1, 2, 3, 4] * 2 + list(range(5, 14))
    assert sender.stats.retransmits == 4


def test_a_gap_report_after_a_clean_window_still_rewinds() -> None:
    sent: list[bytes] = []
    data = iter([bytes([n]) * 512 for n in range(1, 9)] + [b""])  # blocks 1-9
    sender = BlockSender(sent.append, lambda n: next(data), now=0.0, windowsize=4)
    sender.on_ack(4, 0.01)  # 1-4 arrived, never resent: 5-8 go out
    sender.on_ack(4, 0.02)  # 5 was lost: the peer reports the gap
    assert _block_numbers(sent) == [1, 2, 3, 4, 5, 6, 7, 8, 5, 6, 7, 8]


def test_receiver_reacks_every_duplicate_of_its_last_block() -> None:
    sent: list[bytes] = []
    receiver = BlockReceiver(sent.append, lambda p: True, now=0.0, preamble=encode_ack(0))
    receiver.on_datagram(encode_data(1, bytes(512)), 0.01)
    for _ in range(3):
        receiver.on_datagram(encode_data(1, bytes(512)), 0.02)
    assert sent == [encode_ack(0)] + [encode_ack(1)] * 4


def test_receiver_acknowledges_a_gap_at_once_and_once_rfc_7440() -> None:
    sent: list[bytes] = []
    written = bytearray()
    receiver = BlockReceiver(
        sent.append, writes_into(written), now=0.0, preamble=encode_ack(0), windowsize=4,
    )
    blocks = {n: bytes([n]) * 512 for n in range(1, 9)}
    assert sent == [encode_ack(0)]

    def feed(*numbers: int) -> list[bytes]:
        """Deliver DATA ``numbers``; what the receiver sent in answer."""
        before = len(sent)
        for n in numbers:
            receiver.on_datagram(encode_data(n, blocks[n]), 0.01)
        return sent[before:]

    assert feed(1, 2) == []  # half a window: nothing to say yet
    assert feed(4) == [encode_ack(2)]  # 3 is missing: the sender must go back to it now
    assert feed(5) == []  # the same gap: no second ACK 2
    assert feed(3, 4, 5) == []  # the sender went back: in order again
    assert feed(6) == [encode_ack(6)]  # a whole window since ACK 2
    assert bytes(written) == b"".join(blocks[n] for n in range(1, 7))
    assert feed(8) == [encode_ack(6)]  # a new gap is reported again, once
    assert feed(8) == []
    assert feed(7, 8) == []
    receiver.on_datagram(encode_data(9, b"end"), 0.02)
    assert sent[-1] == encode_ack(9) and receiver.complete
    assert bytes(written) == b"".join(blocks[n] for n in range(1, 9)) + b"end"


def test_receiver_acks_only_after_a_deferred_write_completes() -> None:
    sent: list[bytes] = []
    receiver = BlockReceiver(sent.append, lambda p: False, now=0.0, preamble=encode_ack(0))
    receiver.on_datagram(encode_data(1, bytes(512)), 0.01)
    receiver.on_datagram(encode_data(1, bytes(512)), 0.02)  # retransmission while writing
    assert sent == [encode_ack(0)]
    receiver.write_done(0.03)
    assert sent == [encode_ack(0), encode_ack(1)]


def test_receiver_dallies_and_reacks_a_retransmitted_final_block() -> None:
    sent: list[bytes] = []
    receiver = BlockReceiver(
        sent.append, lambda p: True, now=0.0, preamble=encode_ack(0), dally=2.0
    )
    receiver.on_datagram(encode_data(1, b"end"), 0.1)
    assert receiver.complete and not receiver.done
    receiver.on_datagram(encode_data(1, b"end"), 0.5)
    assert sent[-2:] == [encode_ack(1), encode_ack(1)]
    assert receiver.deadline is not None
    receiver.on_timeout(receiver.deadline)
    assert receiver.outcome is Outcome.COMPLETE


def _receiver_after_block_1(repeat_ack: bool) -> tuple[BlockReceiver, list[bytes]]:
    sent: list[bytes] = []
    receiver = BlockReceiver(
        sent.append, lambda p: True, now=0.0, preamble=encode_ack(0), repeat_ack=repeat_ack
    )
    receiver.on_datagram(encode_data(1, bytes(512)), 0.001)
    assert sent == [encode_ack(0), encode_ack(1)]
    return receiver, sent


def test_a_receiver_repeats_its_ack_for_a_missing_block_and_ignores_the_echo() -> None:
    receiver, sent = _receiver_after_block_1(repeat_ack=True)
    assert receiver.deadline is not None
    receiver.on_timeout(receiver.deadline)  # block 2 (or our ACK 1) lost: ask again
    assert sent[2:] == [encode_ack(1)]
    receiver.on_datagram(encode_data(2, bytes(512)), 0.5)
    receiver.on_datagram(encode_data(2, bytes(512)), 0.5001)  # the sender answered both
    assert sent[3:] == [encode_ack(2)]  # the echo of our repeat: not acknowledged again
    receiver.on_datagram(encode_data(3, bytes(512)), 0.6)
    receiver.on_datagram(encode_data(3, bytes(512)), 0.7)  # a real duplicate: ACK lost
    assert sent[4:] == [encode_ack(3), encode_ack(3)]
    assert receiver.stats.blocks == 3 and receiver.outcome is None


def test_a_receiver_repeats_its_ack_a_few_times_then_leaves_it_to_the_sender() -> None:
    receiver, sent = _receiver_after_block_1(repeat_ack=True)
    for _ in range(8):
        assert receiver.deadline is not None
        receiver.on_timeout(receiver.deadline)
    assert sent[2:] == [encode_ack(1)] * 4


@pytest.mark.parametrize("repeat_ack", [True, False])
def test_a_dallying_receiver_repeats_its_final_ack_a_few_times_with_repeat_ack(
    repeat_ack: bool,
) -> None:
    """curl waits 5 s before it sends a last block again, as long as the dally: its
    final ACK, if lost, is repeated on the receiver's timer instead."""
    sent: list[bytes] = []
    receiver = BlockReceiver(
        sent.append, lambda p: True, now=0.0, preamble=encode_ack(0), dally=5.0,
        repeat_ack=repeat_ack,
    )
    receiver.on_datagram(encode_data(1, b"end"), 0.001)
    assert receiver.complete and sent == [encode_ack(0), encode_ack(1)]
    while receiver.outcome is None:
        assert receiver.deadline is not None
        receiver.on_timeout(receiver.deadline)
    assert receiver.outcome is Outcome.COMPLETE
    assert receiver.stats.finished == pytest.approx(5.001)  # the dally, whole
    assert sent[2:] == ([encode_ack(1)] * 4 if repeat_ack else [])


def test_without_repeat_ack_a_lockstep_receiver_waits_for_the_sender() -> None:
    receiver, sent = _receiver_after_block_1(repeat_ack=False)
    assert receiver.deadline is not None
    receiver.on_timeout(receiver.deadline)
    assert sent == [encode_ack(0), encode_ack(1)]


def test_a_receivers_oack_goes_out_again_when_the_request_does_not_on_its_timer() -> None:
    # curl answers every OACK with a DATA 1 read afresh from its file: an OACK repeated
    # after its DATA 1 was lost would shift the whole upload by a block.
    sent: list[bytes] = []
    oack = b"\x00\x06blksize\x001468\x00"
    receiver = BlockReceiver(
        sent.append, lambda p: True, now=0.0, preamble=oack, blksize=1468,
        first_contact_retries=2, give_up_after=30.0,
    )
    now = 0.0
    for _ in range(5):  # more timeouts than first_contact_retries: silent, not given up
        now = receiver.deadline or now
        receiver.on_timeout(now)
    assert sent == [oack] and receiver.outcome is None and now < 30
    receiver.request_repeated()  # the client heard nothing: it asks again
    assert sent == [oack, oack]
    receiver.on_datagram(encode_data(1, bytes(1468)), now + 0.1)
    receiver.request_repeated()  # a late copy of the request, after block 1: nothing
    assert sent == [oack, oack, encode_ack(1)]


def test_without_block_1_a_silent_receiver_gives_up_at_the_idle_timeout() -> None:
    receiver = BlockReceiver(
        lambda d: None, lambda p: True, now=0.0, preamble=b"\x00\x06blksize\x001468\x00",
        blksize=1468, first_contact_retries=2, give_up_after=30.0,
    )
    while receiver.outcome is None and receiver.deadline is not None:
        receiver.on_timeout(receiver.deadline)
    assert receiver.outcome is Outcome.TIMED_OUT
    assert receiver.stats.finished is not None and receiver.stats.finished >= 30.0


def test_an_oack_that_frames_blocks_as_plain_tftp_is_repeated_as_ack_0() -> None:
    # blksize 512, no window: ACK 0 says the same, and curl takes it as an old ACK
    # (resending its DATA 1 as it was) or, without our OACK, as "no options".
    sent: list[bytes] = []
    oack = b"\x00\x06tsize\x001000\x00"
    receiver = BlockReceiver(sent.append, lambda p: True, now=0.0, preamble=oack)
    receiver.on_timeout(receiver.deadline or 1.0)
    assert sent == [oack, encode_ack(0)]


def test_a_receivers_ack_0_is_still_repeated_on_its_timer() -> None:
    sent: list[bytes] = []
    receiver = BlockReceiver(sent.append, lambda p: True, now=0.0, preamble=encode_ack(0))
    receiver.on_timeout(receiver.deadline or 1.0)
    assert sent == [encode_ack(0)] * 2


def test_oversized_block_is_an_illegal_operation() -> None:
    sent: list[bytes] = []
    receiver = BlockReceiver(sent.append, lambda p: True, now=0.0, preamble=encode_ack(0))
    receiver.on_datagram(encode_data(1, bytes(513)), 0.0)
    assert receiver.outcome is Outcome.LOCAL_ERROR
    assert sent[-1][:4] == struct.pack("!HH", 5, ErrorCode.ILLEGAL_OPERATION)


def test_receiver_size_limit_is_disk_full_before_writing() -> None:
    sent: list[bytes] = []
    written = bytearray()
    receiver = BlockReceiver(
        sent.append, writes_into(written), now=0.0, preamble=encode_ack(0), max_bytes=1000
    )
    receiver.on_datagram(encode_data(1, bytes(512)), 0.0)
    receiver.on_datagram(encode_data(2, bytes(512)), 0.0)
    assert receiver.outcome is Outcome.LOCAL_ERROR and len(written) == 512
    assert sent[-1][:4] == struct.pack("!HH", 5, ErrorCode.DISK_FULL)


def test_peer_error_ends_the_transfer() -> None:
    sender = BlockSender(lambda d: None, lambda n: b"x", now=0.0)
    sender.on_datagram(struct.pack("!HH", 5, 3) + b"disk full\0", 0.1)
    assert sender.outcome is Outcome.PEER_ERROR
    assert sender.stats.error_code == 3 and sender.stats.error_message == "disk full"


def test_a_peer_whose_port_closed_ends_the_transfer_without_a_word() -> None:
    sent: list[bytes] = []
    sender = BlockSender(sent.append, lambda n: b"x" * n, now=0.0)
    sender.on_datagram(encode_ack(1), 0.1)
    before = len(sent)
    sender.peer_unreachable(0.2)
    assert sender.outcome is Outcome.PEER_GONE and sender.deadline is None
    assert sender.stats.finished == 0.2 and sender.stats.blocks == 1
    assert "port is closed" in sender.stats.error_message
    assert len(sent) == before  # no ERROR to a port that is closed
    sender.peer_unreachable(0.3)  # once ended, it stays as it ended
    assert sender.stats.finished == 0.2


@pytest.mark.parametrize("dallying", [True, False])
def test_a_receiver_whose_sender_left_is_complete_only_while_dallying(dallying: bool) -> None:
    receiver = BlockReceiver(
        lambda d: None, lambda p: True, now=0.0, preamble=encode_ack(0), dally=2.0
    )
    receiver.on_datagram(encode_data(1, bytes(512)), 0.1)
    if dallying:
        receiver.on_datagram(encode_data(2, b"end"), 0.2)  # the final block, acknowledged
    receiver.peer_unreachable(0.3)
    assert receiver.outcome is (Outcome.COMPLETE if dallying else Outcome.PEER_GONE)


def test_sender_gives_up_after_max_retries_with_backoff() -> None:
    sent: list[bytes] = []
    sender = BlockSender(
        sent.append, lambda n: b"x", now=0.0, timer=RetransmitTimer(initial=0.1, maximum=1.0),
        max_retries=4,
    )
    waits = []
    now = 0.0
    while not sender.done:
        assert sender.deadline is not None
        waits.append(round(sender.deadline - now, 3))
        now = sender.deadline
        sender.on_timeout(now)
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert sender.outcome is Outcome.TIMED_OUT
    assert len(sent) == 5 + 1  # first transmission, 4 retries, then ERROR
    assert sent[-1][:2] == b"\x00\x05"


def test_oack_preamble_is_block_zero_and_not_counted_as_data() -> None:
    sent: list[bytes] = []
    oack = b"\x00\x06blksize\x001024\x00"
    sender = BlockSender(sent.append, lambda n: b"hi", now=0.0, blksize=1024, preamble=oack)
    assert sent == [oack]
    sender.on_ack(0, 0.01)
    assert sent[-1] == encode_data(1, b"hi")
    sender.on_ack(1, 0.02)
    assert sender.outcome is Outcome.COMPLETE
    assert sender.stats.bytes == 2 and sender.stats.blocks == 1


def test_rtt_estimate_makes_lan_retransmits_fast() -> None:
    data = bytes(512 * 200)
    link = Link(seed=5, loss=0.1, delay=0.0005)
    sender, _receiver, received = transfer(data, link)
    assert received == data
    # ~40 losses each way; with 1 s fixed timers this would take ~40 s of simulated time.
    assert sender.stats.finished is not None and sender.stats.finished < 2.0
    assert sender.timer.srtt is not None and sender.timer.srtt < 0.01


def test_timer_arithmetic_follows_rfc_6298() -> None:
    timer = RetransmitTimer(initial=1.0, minimum=0.001, maximum=60)
    assert timer.rto == 1.0
    timer.sample(0.1)
    assert timer.srtt == 0.1 and timer.rttvar == 0.05 and timer.rto == pytest.approx(0.3)
    timer.sample(0.1)
    assert timer.rttvar == pytest.approx(0.0375) and timer.rto == pytest.approx(0.25)
    timer.timed_out()
    assert timer.rto == pytest.approx(0.5)
    timer.sample(0.1)
    assert timer.backoff == 1


class CountingSource:
    """A source of ``size`` bytes that counts reads and can say "not yet" (``None``)."""

    def __init__(self, size: int) -> None:
        self.data = bytes(range(256)) * (size // 256 + 1)
        self.size = size
        self.offset = 0
        self.reads = 0
        self.ready = True

    def read(self, n: int) -> bytes | None:
        if not self.ready:
            return None
        self.reads += 1
        chunk = self.data[self.offset : min(self.offset + n, self.size)]
        self.offset += len(chunk)
        return chunk


def block_numbers(datagrams: list[bytes]) -> list[int]:
    return [struct.unpack("!HH", d[:4])[1] for d in datagrams]


def test_sender_builds_the_next_window_while_waiting_for_the_ack() -> None:
    sent: list[bytes] = []
    source = CountingSource(512 * 20)
    sender = BlockSender(sent.append, source.read, now=0.0, windowsize=4)
    assert block_numbers(sent) == [1, 2, 3, 4]
    assert source.reads == 8  # the window, and the next one built ahead
    reads_before_ack = source.reads
    sender.on_ack(4, 0.01)
    assert block_numbers(sent[4:]) == [5, 6, 7, 8]  # were ready: sent as they were
    assert source.reads == reads_before_ack + 4  # only the window after them is read
    assert sent[4] == encode_data(5, source.data[4 * 512 : 5 * 512])


def test_lockstep_sender_has_the_next_block_ready_before_the_ack() -> None:
    sent: list[bytes] = []
    source = CountingSource(512 * 3 + 7)
    sender = BlockSender(sent.append, source.read, now=0.0)
    assert block_numbers(sent) == [1] and source.reads == 2
    for block in (1, 2, 3):
        sender.on_ack(block, 0.01 * block)
    assert block_numbers(sent) == [1, 2, 3, 4] and len(sent[-1]) == 4 + 7
    assert source.reads == 4  # the short final block ends the reading
    sender.on_ack(4, 0.1)
    assert sender.outcome is Outcome.COMPLETE and sender.stats.bytes == 512 * 3 + 7


def test_blocks_built_ahead_are_bounded_in_bytes() -> None:
    source = CountingSource(65464 * 64)
    BlockSender(lambda d: None, source.read, now=0.0, blksize=65464, windowsize=16)
    assert source.reads == 16 + 2  # a window, and 128 KiB ahead at most


def test_a_source_that_is_not_ready_stalls_only_the_blocks_ahead() -> None:
    sent: list[bytes] = []
    source = CountingSource(512 * 8)
    source.ready = False
    sender = BlockSender(sent.append, source.read, now=0.0, windowsize=2)
    assert sent == [] and sender.deadline is not None
    source.ready = True
    sender.resume(0.01)  # the window goes out; the next one is built
    assert block_numbers(sent) == [1, 2] and source.reads == 4
    source.ready = False
    sender.on_ack(2, 0.02)  # blocks 3-4 were ready; 5-6 are not yet
    assert block_numbers(sent[2:]) == [3, 4]
    deadline = sender.deadline
    source.ready = True
    sender.resume(0.03)  # nothing new to send (3-4 are in flight): only built ahead
    assert len(sent) == 4 and sender.deadline == deadline and source.reads == 6
    sender.on_ack(4, 0.04)
    assert block_numbers(sent[4:]) == [5, 6]

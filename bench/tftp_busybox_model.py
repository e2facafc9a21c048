#!/usr/bin/env python3
"""netsvc's download engine against a model of busybox's TFTP client, through simulated loss.

A discrete-event simulation, deterministic per seed, no sockets: the server side is
netsvc's :class:`~netsvc.tftp.engine.BlockSender` as the server builds it (an OACK first,
the retransmission timer of ``TFTPServerLimits``), the client side follows busybox 1.35's
``tftp_protocol`` (``networking/tftp.c``): it asks for ``tsize``, answers only the block
it waits for, never a duplicate, and repeats its last packet after 100 ms of silence,
then 1.5 times longer each time up to 2 s, giving up after 12 silent waits; any datagram
it does not want restarts its current wait. Each direction drops ``--loss`` percent of
datagrams at random and delays the rest by ``--delay`` seconds.

It is how the eleventh session found why busybox sometimes needed minutes through 10 %
loss (docs/benchmarks.rst, "Eleventh session"); ``--floor`` starts the timer from a floor
shared by an earlier download (``netsvc.tftp.floors``).

    .venv/bin/python bench/tftp_busybox_model.py --runs 100

Prints the downloads slower than ``--slow`` seconds (simulated), then the median, the
maximum and how many were slow; last line ``SUMMARY tftp-busybox-model``.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import struct
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netsvc.tftp.engine import BlockSender
from netsvc.tftp.server import TFTPServerLimits

RRQ, DATA, ACK, OACK = 1, 3, 4, 6
FIRST_WAIT, LONGEST_WAIT, SILENT_WAITS = 0.1, 2.0, 12
#: Simulated seconds after which a download counts as hung.
HORIZON = 900.0


class Busybox:
    """busybox's download loop, fed datagrams and its own timer by the simulation."""

    def __init__(self, blksize: int, send: Callable[[bytes], None]) -> None:
        self.blksize = blksize
        self.send = send
        self.expect_oack = True
        self.block = 1  # the block it waits for
        self.last: bytes = b""
        self.wait = FIRST_WAIT
        self.silent_waits_left = SILENT_WAITS
        self.done = False

    def send_new(self, datagram: bytes) -> None:
        self.last = datagram
        self.wait = FIRST_WAIT
        self.silent_waits_left = SILENT_WAITS
        self.send(datagram)

    def on_datagram(self, datagram: bytes) -> bool:
        """True when the datagram was wanted (a new packet went out)."""
        opcode, number = struct.unpack("!HH", datagram[:4])
        if self.expect_oack:
            self.expect_oack = False
            if opcode == OACK:
                self.send_new(struct.pack("!HH", ACK, 0))
                return True
        if opcode == DATA and number == self.block & 0xFFFF:
            self.done = len(datagram) - 4 != self.blksize
            self.send_new(struct.pack("!HH", ACK, number))
            self.block += 1
            return True
        return False  # ignored: the current wait starts again

    def on_silence(self) -> bool:
        """Its wait ended without a datagram: repeat, or give up (False)."""
        self.silent_waits_left -= 1
        if self.silent_waits_left == 0:
            return False
        self.wait = min(self.wait * 1.5, LONGEST_WAIT)
        self.send(self.last)
        return True


def simulate(seed: int, args: argparse.Namespace) -> tuple[float, str, float]:
    """(simulated seconds, outcome, the timer's floor at the end) of one download."""
    rng = random.Random(seed)
    data = memoryview(bytes(args.size))
    position = 0
    events: list[tuple[float, int, str, object]] = []
    sequence = 0
    now = 0.0

    def schedule(when: float, kind: str, payload: object = None) -> None:
        nonlocal sequence
        sequence += 1
        heapq.heappush(events, (when, sequence, kind, payload))

    def read(size: int) -> bytes:
        nonlocal position
        chunk = bytes(data[position : position + size])
        position += len(chunk)
        return chunk

    def to_client(datagram: bytes) -> None:
        if rng.random() >= args.loss / 100:
            schedule(now + args.delay, "client", datagram)

    def to_server(datagram: bytes) -> None:
        # A repeated request goes to the listener, which ignores it (its transfer runs).
        if rng.random() >= args.loss / 100 and datagram[1] != RRQ:
            schedule(now + args.delay, "server", datagram)

    client = Busybox(args.blksize, to_server)
    wait_id = 0

    def start_wait() -> None:
        nonlocal wait_id
        wait_id += 1
        schedule(now + client.wait, "silence", wait_id)

    limits = TFTPServerLimits()
    timer = limits.timer_for(None, args.floor or None)
    oack = b"\0\6tsize\0" + str(args.size).encode() + b"\0"
    server = BlockSender(to_client, read, now=0.0, blksize=args.blksize, timer=timer,
                         preamble=oack, give_up_after=limits.idle_timeout)
    client.send_new(b"\0\1file\0octet\0tsize\0000\0")  # its RRQ, answered by the OACK above
    start_wait()
    scheduled_deadline = None
    while True:
        if server.outcome is None and server.deadline != scheduled_deadline:
            scheduled_deadline = server.deadline
            schedule(scheduled_deadline, "timeout", scheduled_deadline)
        now, _, kind, payload = heapq.heappop(events)
        if now > HORIZON:
            return now, "hung", timer.minimum
        if kind == "timeout" and server.outcome is None and payload == server.deadline:
            server.on_timeout(now)
        elif kind == "server" and server.outcome is None:
            server.on_datagram(payload, now)  # type: ignore[arg-type]
        elif kind == "client":
            client.on_datagram(payload)  # type: ignore[arg-type]
            if client.done:
                return now, "complete", timer.minimum
            start_wait()
        elif kind == "silence" and payload == wait_id:
            if not client.on_silence():
                return now, "client gave up", timer.minimum
            start_wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="how many seeds")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=1 << 20, help="bytes")
    parser.add_argument("--blksize", type=int, default=512)
    parser.add_argument("--loss", type=float, default=10.0, help="percent, each direction")
    parser.add_argument("--delay", type=float, default=0.0002, help="seconds, each direction")
    parser.add_argument("--floor", type=float, default=0.0,
                        help="a learned floor the download starts from (seconds)")
    parser.add_argument("--slow", type=float, default=15.0, help="seconds")
    args = parser.parse_args()
    times = []
    for seed in range(args.first_seed, args.first_seed + args.runs):
        seconds, outcome, floor = simulate(seed, args)
        times.append(seconds)
        if seconds > args.slow or outcome != "complete":
            print(f"seed {seed}: {outcome} after {seconds:.1f} s, floor {floor * 1000:.0f} ms",
                  flush=True)
    slow = sum(t > args.slow for t in times)
    median = statistics.median(times)
    print(f"{args.runs} downloads of {args.size} bytes, {args.loss:g}% loss each way: "
          f"median {median:.2f} s, max {max(times):.1f} s, {slow} slower than {args.slow:g} s")
    print(f"SUMMARY tftp-busybox-model median={median:.2f}s max={max(times):.1f}s slow={slow}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

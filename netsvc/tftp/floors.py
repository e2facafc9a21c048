"""Retransmission floors learned per client host, shared by the transfers that follow.

A download's timer learns from its own spurious timeouts (an ACK that came late, not
lost: :meth:`netsvc.tftp.engine.RetransmitTimer.raise_floor`) never to fire sooner than
twice that delay again. Each new transfer used to start from the server's 5 ms floor and
learn it again: with 50 curl downloads at once on two CPUs, about one spurious
retransmission per download (1,435 datagrams per 1 MiB download instead of 1,433), each
costing a packet, a duplicate ACK and the server's work on both. A host whose ACKs were
late a moment ago, because its CPUs are busy, will be late again.

So, as TCP keeps what it measured per destination (Linux's ``tcp_metrics``), the server
remembers a floor a download learned (raised above the one it started with), per client
host, and the downloads for that host that start in the next :data:`KEEP_FOR` seconds
start from it. A host that stops being late is forgotten: only new evidence keeps it.
Shared floors are capped at :data:`SHARED_CAP` (TCP's own minimum timeout): one stall of
a client does not slow every later transfer's loss recovery by seconds, and a transfer
halves its floor at each real loss (``RetransmitTimer.lower_floor``, down to the
server's ``min_rto``), so on a lossy path an inherited floor costs only the first few
losses, and the floor it ends with is the host's from then on. Bounded: at most
:data:`MAX_HOSTS` hosts, the ones learned longest ago dropped first.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["KEEP_FOR", "MAX_HOSTS", "SHARED_CAP", "LearnedFloors"]

#: Seconds a learned floor is kept after it was last learned.
KEEP_FOR = 60.0
#: The highest floor passed on to later transfers (seconds).
SHARED_CAP = 0.2
#: Hosts remembered at most.
MAX_HOSTS = 4096


class LearnedFloors:
    """Per client host: the retransmission floor (seconds) its last downloads learned."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        keep_for: float = KEEP_FOR,
        cap: float = SHARED_CAP,
        max_hosts: int = MAX_HOSTS,
    ) -> None:
        self._clock = clock
        self._keep_for = keep_for
        self._cap = cap
        self._max_hosts = max_hosts
        # host -> (floor, when learned); in order of learning, the oldest first.
        self._floors: dict[str, tuple[float, float]] = {}

    def learned(self, host: str, floor: float) -> None:
        """A download for ``host`` raised its timer's floor to ``floor``."""
        floor = min(floor, self._cap)
        now = self._clock()
        known = self._floors.pop(host, None)
        if known is not None and now - known[1] < self._keep_for:
            floor = max(floor, known[0])  # the learning of a concurrent download stays
        self._floors[host] = (floor, now)
        while len(self._floors) > self._max_hosts:
            del self._floors[next(iter(self._floors))]

    def lowered(self, host: str, floor: float) -> None:
        """A download for ``host`` took its floor down to ``floor``: it saw real losses,
        which a high floor only made slower to recover from. Later downloads start no
        higher (the floor is still forgotten when the raise it came from is old)."""
        known = self._floors.get(host)
        if known is not None and floor < known[0]:
            self._floors[host] = (floor, known[1])

    def floor_for(self, host: str) -> float | None:
        """The floor to start a transfer for ``host`` from, if one is known and fresh."""
        known = self._floors.get(host)
        if known is None:
            return None
        floor, when = known
        if self._clock() - when >= self._keep_for:
            del self._floors[host]
            return None
        return floor

    def __len__(self) -> int:
        return len(self._floors)

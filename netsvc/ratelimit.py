"""Token buckets: one per connection, or one per source address in a bounded table.

Shared by every service that needs a rate limit (UDP echo per source, chat flood control,
TFTP request rate, discovery replies). The caller passes a clock function
(``reactor.seconds``) so tests drive the buckets with :class:`twisted.internet.task.Clock`.

Refill is lazy: the clock is read only when a bucket runs dry, which keeps the common
path (tokens left) to a compare and a subtraction. The price is that a bucket which sat
full for a while and is then drained may be credited that idle time once: over any
interval of T seconds a key gets at most ``2 * burst + rate * T`` tokens, instead of the
``burst + rate * T`` of a continuously refilled bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:  # only a type here: the buckets need no Twisted
    from twisted.logger import Logger

__all__ = ["ALWAYS", "NEVER", "Admission", "HeldBackSources", "PerKeyRateLimiter", "TokenBucket"]

K = TypeVar("K", bound=Hashable)
Clock = Callable[[], float]


class Admission(Protocol):
    """Anything that can answer "may this key act now?" (a bucket, or a fixed verdict)."""

    tokens: float

    def take(self, clock: Clock, cost: float = 1.0) -> bool: ...


class TokenBucket:
    """At most ``burst`` tokens, refilled at ``rate`` tokens/second; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if not (rate > 0 and burst > 0):
            raise ValueError(f"rate and burst must be positive, got rate={rate} burst={burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, clock: Clock, cost: float = 1.0) -> bool:
        """Remove ``cost`` tokens if available; return whether the action is allowed."""
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        now = clock()
        elapsed = now - self.stamp
        self.stamp = now
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def is_full(self, now: float) -> bool:
        """Whether the bucket is (or has refilled to) full at ``now``."""
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


class _Fixed:
    __slots__ = ("tokens", "verdict")

    def __init__(self, verdict: bool) -> None:
        self.verdict = verdict
        # Infinite tokens (or none) let hot paths inline ``tokens >= cost`` for every kind.
        self.tokens = float("inf") if verdict else float("-inf")

    def take(self, clock: Clock, cost: float = 1.0) -> bool:
        return self.verdict

    def is_full(self, now: float) -> bool:
        return False  # a fixed verdict is never forgotten: recomputing it costs more


#: Admissions for keys that are always (or never) allowed, whatever the rate.
ALWAYS: Admission = _Fixed(True)
NEVER: Admission = _Fixed(False)


class PerKeyRateLimiter(Generic[K]):
    """One :class:`TokenBucket` per key (usually a peer address), in a bounded table.

    ``classify(key)`` may return :data:`ALWAYS` or :data:`NEVER` to give a key a fixed
    verdict (decided once, then cached like a bucket), or ``None`` for a normal bucket.
    The table never holds more than ``max_keys`` entries: when it is full, the oldest is
    dropped (insertion order, O(1)); a dropped key comes back with a full bucket.
    """

    def __init__(
        self,
        rate: float | None,
        burst: float,
        clock: Clock,
        max_keys: int = 65536,
        classify: Callable[[K], Admission | None] | None = None,
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        if rate is not None:
            TokenBucket(rate, burst, 0.0)  # validate once, early
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        self.classify = classify
        self._admissions: dict[K, Admission] = {}

    def allow(self, key: K, cost: float = 1.0) -> bool:
        """Charge ``cost`` to ``key``; return whether the action is allowed."""
        admission = self._admissions.get(key)
        if admission is None:
            admission = self.admit(key)
        return admission.take(self.clock, cost)

    @property
    def table(self) -> dict[K, Admission]:
        """The admissions by key, for hot paths that inline the lookup and token check.

        Read it only: add keys with :meth:`admit`, which keeps the table bounded.
        """
        return self._admissions

    def admit(self, key: K) -> Admission:
        """Create (and remember) the admission of a key seen for the first time."""
        admission = self.classify(key) if self.classify is not None else None
        if admission is None:
            if self.rate is None:
                admission = ALWAYS
            else:
                admission = TokenBucket(self.rate, self.burst, self.clock())
        if len(self._admissions) >= self.max_keys:
            del self._admissions[next(iter(self._admissions))]
        self._admissions[key] = admission
        return admission

    def forget_idle(self) -> int:
        """Drop buckets that have refilled completely (their keys lose nothing); return count."""
        now = self.clock()
        idle = [
            key
            for key, admission in self._admissions.items()
            if isinstance(admission, TokenBucket) and admission.is_full(now)
        ]
        for key in idle:
            del self._admissions[key]
        return len(idle)

    def __len__(self) -> int:
        return len(self._admissions)


class HeldBackSources(Generic[K]):
    """Tells the operator when a rate limit starts and stops holding a source back.

    A limit that drops requests silently (as it must: answering them would make the
    server a reflector) looks like a broken server to the user behind that source, so
    the log gets one warning when a source is first held back and one line when it is
    let through again, with how many requests it lost. Never more: at most
    ``max_sources`` sources are followed at once, and at most ``events_per_second``
    warnings (burst ``event_burst``) are written, whatever a flood of sources does.
    """

    def __init__(
        self,
        log: Logger,
        what: str,
        clock: Clock,
        *,
        max_sources: int = 1024,
        events_per_second: float = 1.0,
        event_burst: float = 10.0,
    ) -> None:
        self.log = log
        #: What the limit counts, for the messages ("tftp: requests").
        self.what = what
        self.clock = clock
        self.max_sources = max_sources
        self._warnings = TokenBucket(events_per_second, event_burst, clock())
        #: Sources held back right now (those that were reported), with their losses.
        self.held: dict[K, int] = {}

    def dropped(self, source: K) -> None:
        """The limit held back one request of ``source``."""
        held = self.held
        count = held.get(source)
        if count is not None:
            held[source] = count + 1
        elif len(held) < self.max_sources and self._warnings.take(self.clock):
            held[source] = 1
            self.log.warn(
                "{what} from {source} exceed the rate limit: ignored until they slow down",
                what=self.what,
                source=source,
            )

    def let_through(self, source: K) -> None:
        """The limit let a request of ``source`` through (callers skip this while
        :attr:`held` is empty: the common case costs one truth test)."""
        count = self.held.pop(source, None)
        if count is not None:
            self.log.info(
                "{what} from {source} are under the rate limit again; {count} were ignored",
                what=self.what,
                source=source,
                count=count,
            )

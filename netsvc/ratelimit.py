"""Token buckets: one per connection, or one per source address in a bounded table.

Shared by every service that needs a rate limit (UDP echo per source, chat flood control,
TFTP request rate, discovery replies). Time is passed in by the caller (``now``) so the
buckets stay pure and tests drive them with :class:`twisted.internet.task.Clock`.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["PerKeyRateLimiter", "TokenBucket"]

K = TypeVar("K", bound=Hashable)


class TokenBucket:
    """A token bucket holding at most ``burst`` tokens, refilled at ``rate`` tokens/second.

    A new bucket starts full, so a well-behaved peer is never limited at first contact.
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError(f"rate and burst must be positive, got rate={rate} burst={burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Remove ``cost`` tokens if available; return whether the action is allowed."""
        tokens = self.tokens
        if tokens < self.burst:
            elapsed = now - self.stamp
            if elapsed > 0:
                tokens = min(self.burst, tokens + elapsed * self.rate)
        self.stamp = now
        if tokens >= cost:
            self.tokens = tokens - cost
            return True
        self.tokens = tokens
        return False

    def is_full(self, now: float) -> bool:
        """Whether the bucket would be full at ``now`` (it carries no memory of the past)."""
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


class PerKeyRateLimiter(Generic[K]):
    """One :class:`TokenBucket` per key (usually a peer address), in a bounded table.

    The table never holds more than ``max_keys`` buckets: when it is full, the oldest
    entry is dropped (insertion order, O(1)). A dropped key comes back with a full
    bucket, which only ever errs towards letting a peer through.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 65536) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        TokenBucket(rate, burst, 0.0)  # validate once, early
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[K, TokenBucket] = {}

    def allow(self, key: K, now: float, cost: float = 1.0) -> bool:
        """Charge ``cost`` to ``key``'s bucket; return whether the action is allowed."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                del self._buckets[next(iter(self._buckets))]
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(now, cost)

    def forget_idle(self, now: float) -> int:
        """Drop buckets that have refilled completely (their keys lose nothing); return count."""
        idle = [key for key, bucket in self._buckets.items() if bucket.is_full(now)]
        for key in idle:
            del self._buckets[key]
        return len(idle)

    def __len__(self) -> int:
        return len(self._buckets)

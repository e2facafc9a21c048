import pytest

from netsvc.ratelimit import PerKeyRateLimiter, TokenBucket


def test_bucket_starts_full_and_refills_at_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert not bucket.take(0.05)  # half a token so far
    assert bucket.take(0.1)
    assert not bucket.take(0.1)


def test_bucket_never_exceeds_burst() -> None:
    bucket = TokenBucket(rate=1000, burst=3, now=0.0)
    assert sum(bucket.take(100.0) for _ in range(10)) == 3


def test_bucket_cost_and_clock_going_backwards() -> None:
    bucket = TokenBucket(rate=1, burst=10, now=5.0)
    assert bucket.take(5.0, cost=10)
    assert not bucket.take(4.0)  # a clock step back refills nothing
    assert bucket.take(6.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (1, 0), (-1, 5)])
def test_bucket_rejects_nonsense(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)


def test_limiter_keys_are_independent() -> None:
    limiter: PerKeyRateLimiter[str] = PerKeyRateLimiter(rate=1, burst=2)
    assert limiter.allow("a", 0) and limiter.allow("a", 0)
    assert not limiter.allow("a", 0)
    assert limiter.allow("b", 0)


def test_limiter_table_is_bounded() -> None:
    limiter: PerKeyRateLimiter[int] = PerKeyRateLimiter(rate=1, burst=1, max_keys=100)
    for key in range(10_000):
        limiter.allow(key, 0.0)
    assert len(limiter) == 100


def test_limiter_forgets_only_refilled_buckets() -> None:
    limiter: PerKeyRateLimiter[str] = PerKeyRateLimiter(rate=1, burst=2)
    limiter.allow("busy", 0.0)
    limiter.allow("busy", 0.0)
    limiter.allow("quiet", 0.0)
    assert limiter.forget_idle(1.0) == 1  # "quiet" is full again, "busy" is not
    assert len(limiter) == 1

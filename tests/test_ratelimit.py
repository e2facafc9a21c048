import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent

from netsvc.ratelimit import ALWAYS, NEVER, HeldBackSources, PerKeyRateLimiter, TokenBucket


def test_bucket_starts_full_and_refills_at_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert [bucket.take(clock.seconds) for _ in range(6)] == [True] * 5 + [False]
    clock.advance(0.05)
    assert not bucket.take(clock.seconds)  # half a token so far
    clock.advance(0.05)
    assert bucket.take(clock.seconds)
    assert not bucket.take(clock.seconds)


def test_bucket_after_long_idle_admits_at_most_two_bursts() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=1000, burst=3, now=0.0)
    clock.advance(100)
    assert sum(bucket.take(clock.seconds) for _ in range(10)) == 2 * 3
    assert sum(bucket.take(clock.seconds) for _ in range(10)) == 0


def test_bucket_reads_the_clock_only_when_dry() -> None:
    reads: list[float] = []

    def clock() -> float:
        reads.append(0.0)
        return 0.0

    bucket = TokenBucket(rate=1, burst=100, now=0.0)
    for _ in range(100):
        bucket.take(clock)
    assert reads == []
    bucket.take(clock)
    assert len(reads) == 1


def test_bucket_cost_and_clock_going_backwards() -> None:
    clock = Clock()
    clock.advance(5)
    bucket = TokenBucket(rate=1, burst=10, now=5.0)
    assert bucket.take(clock.seconds, cost=10)
    assert not bucket.take(lambda: 4.0)  # a clock step back refills nothing
    clock.advance(1)
    assert bucket.take(clock.seconds)


def test_bucket_admits_at_most_two_bursts_plus_rate_over_any_interval() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=20, now=0.0)
    clock.advance(1000)  # sat full for a long time
    allowed = 0
    for _ in range(1000):  # 10 s of hammering at 100 tries/s
        allowed += bucket.take(clock.seconds)
        clock.advance(0.01)
    assert allowed <= 2 * 20 + 10 * 10
    assert allowed >= 20 + 10 * 10 - 1


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (1, 0), (-1, 5), (float("nan"), 1)])
def test_bucket_rejects_nonsense(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)


def test_limiter_keys_are_independent() -> None:
    limiter: PerKeyRateLimiter[str] = PerKeyRateLimiter(1, 2, Clock().seconds)
    assert limiter.allow("a") and limiter.allow("a")
    assert not limiter.allow("a")
    assert limiter.allow("b")


def test_limiter_table_is_bounded() -> None:
    limiter: PerKeyRateLimiter[int] = PerKeyRateLimiter(1, 1, Clock().seconds, max_keys=100)
    for key in range(10_000):
        limiter.allow(key)
    assert len(limiter) == 100


def test_limiter_classify_gives_fixed_verdicts() -> None:
    limiter: PerKeyRateLimiter[str] = PerKeyRateLimiter(
        1, 1, Clock().seconds, classify=lambda key: {"vip": ALWAYS, "bad": NEVER}.get(key)
    )
    assert all(limiter.allow("vip") for _ in range(100))
    assert not any(limiter.allow("bad") for _ in range(100))
    assert limiter.allow("other") and not limiter.allow("other")


def test_limiter_without_rate_allows_everything_but_classified() -> None:
    limiter: PerKeyRateLimiter[str] = PerKeyRateLimiter(
        None, 1, Clock().seconds, classify=lambda key: NEVER if key == "bad" else None
    )
    assert all(limiter.allow("x") for _ in range(1000))
    assert not limiter.allow("bad")


def test_limiter_forgets_only_refilled_buckets() -> None:
    clock = Clock()
    limiter: PerKeyRateLimiter[str] = PerKeyRateLimiter(1, 2, clock.seconds)
    limiter.allow("busy")
    limiter.allow("busy")
    limiter.allow("quiet")
    limiter.allow("busy")  # dry: the clock is read, the bucket stamped at 0
    clock.advance(1.0)
    assert limiter.forget_idle() == 1  # "quiet" is full again, "busy" is not
    assert len(limiter) == 1


# -- HeldBackSources: what the operator is told -----------------------------------------------


def _held_back(**kwargs: float) -> tuple[HeldBackSources[str], list[dict[str, object]], Clock]:
    events: list[dict[str, object]] = []
    clock = Clock()
    report: HeldBackSources[str] = HeldBackSources(
        Logger(observer=events.append), "test: requests", clock.seconds, **kwargs  # type: ignore[arg-type]
    )
    return report, events, clock


def test_a_held_back_source_is_reported_once_then_with_its_losses() -> None:
    report, events, _ = _held_back()
    for _ in range(5):
        report.dropped("10.0.0.1")
    assert [(e["log_level"], e["source"]) for e in events] == [(LogLevel.warn, "10.0.0.1")]
    report.let_through("10.0.0.2")  # never held back: nothing to say
    report.let_through("10.0.0.1")
    assert len(events) == 2
    assert events[1]["log_level"] == LogLevel.info and events[1]["count"] == 5
    assert "5 were ignored" in formatEvent(events[1])
    assert report.held == {}
    report.dropped("10.0.0.1")  # held back again: a new warning
    assert len(events) == 3 and events[2]["log_level"] == LogLevel.warn


def test_a_flood_of_sources_writes_a_bounded_log() -> None:
    report, events, clock = _held_back(max_sources=50, events_per_second=1, event_burst=10)
    for index in range(10_000):
        report.dropped(f"10.0.{index // 256}.{index % 256}")
    assert len(events) == 10 and len(report.held) == 10
    clock.advance(100)  # the warnings' bucket refills, the table of sources does not grow past 50
    for index in range(10_000, 20_000):
        report.dropped(f"10.{index // 65536}.{index // 256 % 256}.{index % 256}")
        clock.advance(1)
    assert len(report.held) == 50 and len(events) == 50

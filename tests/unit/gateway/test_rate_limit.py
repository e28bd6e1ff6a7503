"""Token-bucket rate limit per principal."""

from __future__ import annotations

import pytest

from chatplane.common import errors
from chatplane.gateway.rate_limit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_the_configured_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=3, clock=clock)
    for _ in range(3):
        limiter.acquire("t", "u")
    with pytest.raises(errors.ResourceExhausted) as raised:
        limiter.acquire("t", "u")
    assert raised.value.retry_after == pytest.approx(1.0)
    clock.now += 0.5
    with pytest.raises(errors.ResourceExhausted) as raised:
        limiter.acquire("t", "u")
    assert raised.value.retry_after == pytest.approx(0.5)
    clock.now += 0.5
    limiter.acquire("t", "u")


def test_principals_have_separate_buckets() -> None:
    limiter = RateLimiter(per_minute=60, burst=1, clock=Clock())
    limiter.acquire("t", "u")
    limiter.acquire("t", "v")
    limiter.acquire("s", "u")
    with pytest.raises(errors.ResourceExhausted):
        limiter.acquire("t", "u")


def test_bucket_never_exceeds_burst_after_a_long_idle() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=600, burst=2, clock=clock)
    limiter.acquire("t", "u")
    clock.now += 3600
    limiter.acquire("t", "u")
    limiter.acquire("t", "u")
    with pytest.raises(errors.ResourceExhausted):
        limiter.acquire("t", "u")

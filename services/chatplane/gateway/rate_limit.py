"""Per-principal request rate limit: a token bucket per (tenant, user) in this Gateway
process (requests per minute with a burst); over the limit → RESOURCE_EXHAUSTED with the
time until the next request is allowed."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from chatplane.common import errors

# Buckets of principals idle long enough are full again, so forgetting the oldest is exact.
_MAX_BUCKETS = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by principal."""

    def __init__(
        self,
        *,
        per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()

    def acquire(self, tenant_id: str, user_id: str) -> None:
        """Takes one request from the principal's bucket or raises ResourceExhausted."""
        now = self._clock()
        key = (tenant_id, user_id)
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(tokens=self._burst, updated=now)
        else:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
        self._buckets[key] = bucket
        if len(self._buckets) > _MAX_BUCKETS:
            self._buckets.popitem(last=False)
        if bucket.tokens < 1.0:
            retry_after = (1.0 - bucket.tokens) / self._rate
            # The delay travels as google.rpc.RetryInfo; clients render it themselves.
            raise errors.ResourceExhausted("rate limit exceeded", retry_after=retry_after)
        bucket.tokens -= 1.0

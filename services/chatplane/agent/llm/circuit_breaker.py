"""A circuit breaker per model provider, so that an outage fails fast instead of queueing:
`failure_threshold` consecutive failures open it for `cooldown_seconds`; then exactly one call
(the probe) goes through while the others still fail fast; the probe's outcome closes it or
opens it again. A streamed call counts as a success at its first token.

Written here rather than taken from pybreaker or purgatory: both let every concurrent call
through once half-open and judge a call only when a wrapped function returns, while a stream's
health is known at its first token and concurrent streams must not all probe at once."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

_log = logging.getLogger(__name__)


class BreakerState(enum.Enum):
    """Where the breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Admits or rejects calls to one provider; calls report back with `succeeded`,
    `failed` or `abandoned` (a probe that ended without a verdict, e.g. a client cancel)."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int,
        cooldown_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._threshold = failure_threshold
        self._cooldown = cooldown_seconds
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose cooldown ended reads as half-open)."""
        if self._state is BreakerState.OPEN and self._cooldown_over():
            return BreakerState.HALF_OPEN
        return self._state

    def _cooldown_over(self) -> bool:
        return self._clock() - self._opened_at >= self._cooldown

    def admit(self) -> bool:
        """Whether a call may go out now; a True in half-open makes that call the probe."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if not self._cooldown_over():
                return False
            self._state = BreakerState.HALF_OPEN
        if self._probing:
            return False
        self._probing = True
        return True

    def succeeded(self) -> None:
        """The call reached its first token: the provider works."""
        if self._state is not BreakerState.CLOSED:
            _log.info("circuit closed", extra={"provider": self.name})
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._probing = False

    def failed(self) -> None:
        """The call failed in a way that says the provider is down."""
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            if self._state is not BreakerState.OPEN:
                _log.warning(
                    "circuit opened", extra={"provider": self.name, "failures": self._failures}
                )
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
        self._probing = False

    def abandoned(self) -> None:
        """The call ended without saying anything about the provider."""
        self._probing = False

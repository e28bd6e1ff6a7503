"""Failures of a model provider, as the fallback chain and the client see them. Each backend
translates its SDK's exceptions into these at one boundary; each is also a domain error, so
the service interceptor maps it to its gRPC status (docs/llm.md, failure policy).

    LlmError
    ├── ProviderUnavailable (errors.Unavailable)       overloaded, 5xx, connection, bad config
    │   └── CircuitOpen                                 the breaker rejects without a request
    ├── ProviderRateLimited (errors.ResourceExhausted)  429 after the SDK's retries
    ├── ProviderStalled (errors.DeadlineExceeded)      no token for `llm_stall_timeout_seconds`
    └── ProviderRejected (errors.FailedPrecondition)   the provider refused the request (4xx)

Messages are safe to show to the client: they name no provider internals and no key.
"""

from __future__ import annotations

from chatplane.common import errors


class LlmError(errors.ChatplaneError):
    """A model provider failed; `attempts` is how many upstream requests it took."""

    # Whether another model of the fallback chain may answer instead (before the first token).
    fallback_allowed = True
    # Whether the failure counts against the provider's circuit breaker.
    counts_as_outage = True

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts


class ProviderUnavailable(LlmError, errors.Unavailable):
    """The provider is overloaded, failing or unreachable."""


class CircuitOpen(ProviderUnavailable):
    """The provider failed repeatedly; calls fail fast until its cooldown ends."""

    counts_as_outage = False

    def __init__(self, message: str) -> None:
        super().__init__(message, attempts=0)


class ProviderRateLimited(LlmError, errors.ResourceExhausted):
    """The provider's rate limit; `retry_after` seconds until it lets requests through."""

    counts_as_outage = False

    def __init__(self, message: str, *, retry_after: float, attempts: int = 1) -> None:
        errors.ResourceExhausted.__init__(self, message, retry_after)
        self.attempts = attempts


class ProviderStalled(LlmError, errors.DeadlineExceeded):
    """The stream sent no token within the stall timeout."""


class ProviderRejected(LlmError, errors.FailedPrecondition):
    """The provider refused this request (invalid or too large); another model would too."""

    fallback_allowed = False
    counts_as_outage = False

"""The fallback chain: the configured model, then its fallbacks in order, each behind its
provider's circuit breaker. A model is left for the next one only before its first token
(overloaded, down, stalled, rate-limited); after the first token a failure ends the answer.
No token for `stall_timeout` seconds cuts the stream (DEADLINE_EXCEEDED)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

from chatplane.agent.llm import errors as llm_errors
from chatplane.agent.llm.base import (
    LlmBackend,
    Prompt,
    StreamEnd,
    StreamItem,
    StreamStart,
    TextChunk,
)
from chatplane.agent.llm.circuit_breaker import CircuitBreaker

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Route:
    """One model of the chain and its provider's breaker (shared by the provider's models)."""

    backend: LlmBackend
    breaker: CircuitBreaker


async def _next_item(stream: AsyncIterator[StreamItem], stall_timeout: float) -> StreamItem:
    try:
        async with asyncio.timeout(stall_timeout):
            return await anext(stream)
    except TimeoutError:
        raise llm_errors.ProviderStalled(
            f"the model sent nothing for {stall_timeout:g} s; the answer was cut"
        ) from None
    except StopAsyncIteration:
        raise llm_errors.ProviderUnavailable("the model provider ended the answer early") from None


async def _first_output(
    stream: AsyncIterator[StreamItem], stall_timeout: float
) -> TextChunk | StreamEnd:
    """The first text (or the end of an empty answer), skipping the backend's own start."""
    while True:
        item = await _next_item(stream, stall_timeout)
        if not isinstance(item, StreamStart):
            return item


class ModelChain(LlmBackend):
    """An LlmBackend over an ordered list of routes."""

    def __init__(self, routes: Sequence[Route], *, stall_timeout_seconds: float) -> None:
        if not routes:
            raise ValueError("a model chain needs at least one model")
        self._routes = tuple(routes)
        self._stall_timeout = stall_timeout_seconds

    @property
    def model(self) -> str:
        return self._routes[0].backend.model

    @property
    def models(self) -> list[str]:
        """Every model of the chain, the configured one first."""
        return [route.backend.model for route in self._routes]

    @property
    def routes(self) -> tuple[Route, ...]:
        """The chain's routes, in order."""
        return self._routes

    async def stream(self, prompt: Prompt, *, max_attempts: int = 1) -> AsyncGenerator[StreamItem]:
        """`max_attempts` caps the upstream requests of the whole chain for this answer: a
        model may use its SDK's retries as long as each later model keeps one attempt."""
        remaining = max_attempts
        failure: llm_errors.LlmError | None = None
        for index, route in enumerate(self._routes):
            if remaining <= 0:
                break
            if not route.breaker.admit():
                failure = failure or llm_errors.CircuitOpen(
                    "the model provider is failing; not calling it for a while"
                )
                continue
            # Each later model keeps one attempt; the last one may use all that is left.
            later = len(self._routes) - index - 1
            allowance = max(1, remaining - later)
            upstream = route.backend.stream(prompt, max_attempts=allowance)
            async with contextlib.aclosing(upstream):
                try:
                    first = await _first_output(upstream, self._stall_timeout)
                except llm_errors.LlmError as error:
                    remaining -= max(error.attempts, 1)
                    (route.breaker.failed if error.counts_as_outage else route.breaker.abandoned)()
                    _log.warning(
                        "model failed before its first token",
                        extra={
                            "model": route.backend.model,
                            "error": type(error).__name__,
                            "attempts": error.attempts,
                        },
                    )
                    if not error.fallback_allowed:
                        raise
                    failure = error
                    continue
                except BaseException:
                    route.breaker.abandoned()  # the client went away: no verdict
                    raise
                route.breaker.succeeded()
                if route is not self._routes[0]:
                    _log.info(
                        "answering with a fallback model", extra={"model": route.backend.model}
                    )
                yield StreamStart(model=route.backend.model)
                yield first
                item: StreamItem = first
                while not isinstance(item, StreamEnd):
                    try:
                        item = await _next_item(upstream, self._stall_timeout)
                    except llm_errors.LlmError as error:
                        if error.counts_as_outage:
                            route.breaker.failed()
                        _log.warning(
                            "model failed mid-answer",
                            extra={"model": route.backend.model, "error": type(error).__name__},
                        )
                        raise
                    if not isinstance(item, StreamStart):
                        yield item
                return
        if failure is None:
            failure = llm_errors.ProviderUnavailable("no model attempt was left for this answer")
        raise failure

    async def close(self) -> None:
        for route in self._routes:
            await route.backend.close()

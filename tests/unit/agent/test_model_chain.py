"""The fallback chain and the circuit breaker, over scripted backends (no network)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

import pytest

from chatplane.agent.llm import errors as llm_errors
from chatplane.agent.llm.base import (
    LlmBackend,
    Prompt,
    StopReason,
    StreamEnd,
    StreamItem,
    StreamStart,
    TextChunk,
)
from chatplane.agent.llm.circuit_breaker import BreakerState, CircuitBreaker
from chatplane.agent.llm.model_chain import ModelChain, Route

PROMPT = Prompt("system", [], [], "question", 10, 3)


class Scripted(LlmBackend):
    """Fails before its first token with `error` (if any), else streams `words`; after
    `fail_after` words it raises `error` instead of going on; `stall_after` words: hangs."""

    def __init__(
        self,
        name: str,
        *,
        words: Sequence[str] = ("a ", "b "),
        error: llm_errors.LlmError | None = None,
        fail_after: int | None = None,
        stall_after: int | None = None,
    ) -> None:
        self.name = name
        self.words = words
        self.error = error
        self.fail_after = fail_after
        self.stall_after = stall_after
        self.calls: list[int] = []
        self.closed = 0

    @property
    def model(self) -> str:
        return self.name

    async def stream(self, prompt: Prompt, *, max_attempts: int = 1) -> AsyncGenerator[StreamItem]:
        self.calls.append(max_attempts)
        try:
            if self.error is not None and self.fail_after is None:
                self.error.attempts = max_attempts
                raise self.error
            yield StreamStart(self.name)
            for index, word in enumerate(self.words):
                if index == self.fail_after and self.error is not None:
                    raise self.error
                if index == self.stall_after:
                    await asyncio.sleep(3600)
                yield TextChunk(word, 0)
            yield StreamEnd(StopReason.END, 1, len(self.words))
        finally:
            self.closed += 1


def breaker(name: str = "p", failures: int = 2) -> CircuitBreaker:
    return CircuitBreaker(name, failure_threshold=failures, cooldown_seconds=60)


async def collect(chain: ModelChain, attempts: int = 3) -> list[StreamItem]:
    return [item async for item in chain.stream(PROMPT, max_attempts=attempts)]


async def test_an_overloaded_model_falls_back_before_its_first_token() -> None:
    primary = Scripted("primary", error=llm_errors.ProviderUnavailable("down"))
    secondary = Scripted("secondary")
    chain = ModelChain(
        [Route(primary, breaker("a")), Route(secondary, breaker("b"))], stall_timeout_seconds=5
    )
    items = await collect(chain)
    assert items[0] == StreamStart("secondary")
    assert [i.text for i in items if isinstance(i, TextChunk)] == ["a ", "b "]
    # Attempts: the primary may retry once, keeping one attempt for the fallback.
    assert primary.calls == [2] and secondary.calls == [1]
    assert primary.closed == 1


async def test_a_rejected_request_does_not_fall_back() -> None:
    primary = Scripted("primary", error=llm_errors.ProviderRejected("bad"))
    secondary = Scripted("secondary")
    chain = ModelChain(
        [Route(primary, breaker("a")), Route(secondary, breaker("b"))], stall_timeout_seconds=5
    )
    with pytest.raises(llm_errors.ProviderRejected):
        await collect(chain)
    assert secondary.calls == []


async def test_after_the_first_token_a_failure_ends_the_answer() -> None:
    shared = breaker(failures=1)
    primary = Scripted("primary", error=llm_errors.ProviderUnavailable("x"), fail_after=1)
    secondary = Scripted("secondary")
    chain = ModelChain(
        [Route(primary, shared), Route(secondary, breaker("b"))], stall_timeout_seconds=5
    )
    received: list[StreamItem] = []
    with pytest.raises(llm_errors.ProviderUnavailable):
        async for item in chain.stream(PROMPT, max_attempts=3):
            received.append(item)
    assert received == [StreamStart("primary"), TextChunk("a ", 0)]
    assert secondary.calls == []
    assert shared.state is BreakerState.OPEN


async def test_a_stall_falls_back_before_the_first_token_and_is_cut_after_it() -> None:
    stalled = Scripted("primary", stall_after=0)
    secondary = Scripted("secondary")
    chain = ModelChain(
        [Route(stalled, breaker("a")), Route(secondary, breaker("b"))], stall_timeout_seconds=0.05
    )
    assert (await collect(chain))[0] == StreamStart("secondary")
    assert stalled.closed == 1

    late = Scripted("primary", stall_after=1)
    chain = ModelChain(
        [Route(late, breaker("a")), Route(secondary, breaker("b"))], stall_timeout_seconds=0.05
    )
    with pytest.raises(llm_errors.ProviderStalled):
        await collect(chain)
    assert late.closed == 1


async def test_every_model_failing_reports_the_last_failure_within_the_attempt_budget() -> None:
    first = Scripted("first", error=llm_errors.ProviderUnavailable("down"))
    second = Scripted("second", error=llm_errors.ProviderRateLimited("slow", retry_after=7))
    third = Scripted("third")
    chain = ModelChain(
        [Route(first, breaker("a")), Route(second, breaker("b")), Route(third, breaker("c"))],
        stall_timeout_seconds=5,
    )
    with pytest.raises(llm_errors.ProviderRateLimited) as raised:
        await collect(chain, attempts=2)
    assert raised.value.retry_after == 7
    assert first.calls == [1] and second.calls == [1] and third.calls == []


async def test_an_open_circuit_fails_fast_without_calling_the_provider() -> None:
    down = breaker(failures=1)
    down.failed()
    primary = Scripted("primary")
    chain = ModelChain([Route(primary, down)], stall_timeout_seconds=5)
    with pytest.raises(llm_errors.CircuitOpen):
        await collect(chain)
    assert primary.calls == []


def test_breaker_opens_after_consecutive_failures_and_lets_one_probe_through() -> None:
    now = [0.0]
    cb = CircuitBreaker("p", failure_threshold=3, cooldown_seconds=10, clock=lambda: now[0])
    for _ in range(2):
        assert cb.admit()
        cb.failed()
    assert cb.admit()
    cb.succeeded()  # a success resets the count
    for _ in range(3):
        assert cb.admit()
        cb.failed()
    assert cb.state is BreakerState.OPEN and not cb.admit()
    now[0] = 10.0
    assert cb.state is BreakerState.HALF_OPEN
    assert cb.admit()  # the probe
    assert not cb.admit()  # only one at a time
    cb.abandoned()  # the probe's client went away: another may probe
    assert cb.admit()
    cb.failed()  # a failed probe opens it again for a full cooldown
    assert not cb.admit()
    now[0] = 20.0
    assert cb.admit()
    cb.succeeded()
    assert cb.state is BreakerState.CLOSED and cb.admit() and cb.admit()

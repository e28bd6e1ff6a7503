"""Observes each attempt at a model: one CLIENT span per `stream()` call with the OpenTelemetry
GenAI semantic-convention attributes (system, request/response model, max tokens, usage,
finish reasons), the token and latency metrics, and the gauge of each provider's circuit
breaker. The factory wraps every backend of the model chain with it, so a fallback shows one
span per model tried (an SDK's own retries inside one call are that span's)."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client import Counter, Gauge, Histogram

from chatplane.agent.llm.base import (
    LlmBackend,
    Prompt,
    StopReason,
    StreamEnd,
    StreamItem,
    StreamStart,
)
from chatplane.agent.llm.circuit_breaker import BreakerState, CircuitBreaker
from chatplane.common.context import tenant_var
from chatplane.common.metrics import DURATION_BUCKETS, FIRST_TOKEN_BUCKETS, TenantLabels
from chatplane.common.telemetry import tracer

TOKENS = Counter(
    "chatplane_agent_tokens_total",
    "Model tokens by tenant (the first metrics_tenant_limit tenants; later ones as _other), "
    "model and direction (input, output)",
    ["tenant", "model", "direction"],
)
ATTEMPT_DURATION = Histogram(
    "chatplane_llm_attempt_duration_seconds",
    "One attempt at a model backend, from the request to the end of its stream, by outcome",
    ["model", "outcome"],
    buckets=DURATION_BUCKETS,
)
BACKEND_FIRST_TOKEN = Histogram(
    "chatplane_llm_time_to_first_token_seconds",
    "From the request to a model backend to its first text chunk",
    ["model"],
    buckets=FIRST_TOKEN_BUCKETS,
)

CIRCUIT_STATE = Gauge(
    "chatplane_llm_circuit_state",
    "Circuit breaker of each model provider: 0 closed, 1 half-open (probing), 2 open",
    ["provider"],
)
_CIRCUIT_VALUES = {BreakerState.CLOSED: 0.0, BreakerState.HALF_OPEN: 1.0, BreakerState.OPEN: 2.0}


def export_breaker(breaker: CircuitBreaker) -> None:
    """Reads the breaker's state into the gauge at every scrape."""
    CIRCUIT_STATE.labels(breaker.name).set_function(lambda: _CIRCUIT_VALUES[breaker.state])


# GenAI semantic conventions: finish reasons as the conventions name them.
_FINISH_REASONS = {
    StopReason.END: "stop",
    StopReason.MAX_TOKENS: "length",
    StopReason.STOP_SEQUENCE: "stop",
}


class ObservedBackend(LlmBackend):
    """A backend whose every attempt is a span and a set of metric observations."""

    def __init__(self, inner: LlmBackend, *, system: str, tenants: TenantLabels) -> None:
        self._inner = inner
        self._system = system
        self._tenants = tenants

    @property
    def model(self) -> str:
        return self._inner.model

    @property
    def provider(self) -> str:
        return self._inner.provider

    async def stream(self, prompt: Prompt, *, max_attempts: int = 1) -> AsyncGenerator[StreamItem]:
        model = self._inner.model
        started = time.perf_counter()
        # Not made current: nothing runs inside it, and a span attached in an async generator
        # that the caller abandons would be detached in another context.
        span = tracer().start_span(
            f"chat {model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.system": self._system,
                "gen_ai.provider.name": self._system,
                "gen_ai.request.model": model,
                "gen_ai.request.max_tokens": prompt.max_tokens,
                "chatplane.llm.max_attempts": max_attempts,
            },
        )
        outcome = "cancelled"
        chunks = 0
        try:
            async for item in self._inner.stream(prompt, max_attempts=max_attempts):
                if isinstance(item, StreamStart):
                    yield item
                    continue
                if isinstance(item, StreamEnd):
                    outcome = "ok"
                    self._finish(span, model, item)
                    # End now, not when the caller lets go of this generator.
                    ATTEMPT_DURATION.labels(model, outcome).observe(time.perf_counter() - started)
                    span.end()
                    yield item
                    return
                if chunks == 0:
                    BACKEND_FIRST_TOKEN.labels(model).observe(time.perf_counter() - started)
                    span.add_event("gen_ai.first_token")
                chunks += 1
                yield item
        except Exception as error:
            outcome = "error"
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise
        finally:
            if outcome != "ok":
                ATTEMPT_DURATION.labels(model, outcome).observe(time.perf_counter() - started)
                span.end()

    def _finish(self, span: Span, model: str, end: StreamEnd) -> None:
        tenant = self._tenants(tenant_var.get())
        TOKENS.labels(tenant, model, "input").inc(end.input_tokens)
        TOKENS.labels(tenant, model, "output").inc(end.output_tokens)
        span.set_attribute("gen_ai.response.model", model)
        span.set_attribute("gen_ai.usage.input_tokens", end.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", end.output_tokens)
        span.set_attribute("gen_ai.usage.cache_read.input_tokens", end.cache_read_input_tokens)
        span.set_attribute(
            "gen_ai.usage.cache_creation.input_tokens", end.cache_creation_input_tokens
        )
        span.set_attribute("gen_ai.response.finish_reasons", [_FINISH_REASONS[end.reason]])

    async def close(self) -> None:
        await self._inner.close()

"""The observed model backend: token metrics per (bounded) tenant and model, and the circuit
breaker's state as a gauge."""

from __future__ import annotations

from prometheus_client import REGISTRY

from chatplane.agent.llm.base import Prompt, StreamEnd, StreamStart, TextChunk
from chatplane.agent.llm.circuit_breaker import CircuitBreaker
from chatplane.agent.llm.observed import ObservedBackend, export_breaker
from chatplane.agent.llm.offline import OfflineResponder
from chatplane.common.context import tenant_var
from chatplane.common.metrics import TenantLabels


def _sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_the_breaker_gauge_follows_the_breaker() -> None:
    now = [0.0]
    breaker = CircuitBreaker(
        "test-provider", failure_threshold=2, cooldown_seconds=10, clock=lambda: now[0]
    )
    export_breaker(breaker)
    state = "chatplane_llm_circuit_state"
    assert _sample(state, provider="test-provider") == 0
    breaker.failed()
    breaker.failed()
    assert _sample(state, provider="test-provider") == 2
    now[0] = 11.0
    assert _sample(state, provider="test-provider") == 1
    assert breaker.admit()
    breaker.succeeded()
    assert _sample(state, provider="test-provider") == 0


async def test_tokens_are_counted_per_tenant_and_model_and_items_pass_through() -> None:
    backend = ObservedBackend(
        OfflineResponder(tokens_per_second=10_000, first_token_seconds=0, max_tokens=50),
        system="offline",
        tenants=TenantLabels(limit=0),
    )
    tenant_var.set("tenant-unit")
    prompt = Prompt(
        system="", passages=(), history=(), question="hi", max_tokens=50, estimated_input_tokens=7
    )
    labels = {"tenant": "_other", "model": backend.model}
    before = _sample("chatplane_agent_tokens_total", direction="input", **labels) or 0.0
    items = [item async for item in backend.stream(prompt)]
    assert isinstance(items[-1], StreamEnd)
    assert any(isinstance(i, TextChunk) for i in items)
    assert not [i for i in items if isinstance(i, StreamStart) and i.model != backend.model]
    after = _sample("chatplane_agent_tokens_total", direction="input", **labels)
    assert after == before + items[-1].input_tokens

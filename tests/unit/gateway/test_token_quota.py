"""What a turn is charged against its tenant's token quota, from the events it relayed, and
how a spent quota is reported (chatplane.gateway.token_quota)."""

from __future__ import annotations

import time

from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from chatplane.common.status_mapping import to_status
from chatplane.gateway.token_quota import TokenQuotaGate, TurnTokens, quota_exceeded
from chatplane.internal.v1 import quota_pb2
from chatplane.v1 import gateway_pb2, resources_pb2


def delta(text: str) -> gateway_pb2.ChatResponse:
    return gateway_pb2.ChatResponse(delta=resources_pb2.TextDelta(text=text, sequence=1))


def test_usage_event_is_charged_with_cached_prompt_tokens_as_input() -> None:
    tokens = TurnTokens(question_tokens=5)
    tokens.observe(delta("hello there"))
    usage = resources_pb2.Usage(
        input_tokens=100, output_tokens=20, cache_read_input_tokens=7, cache_creation_input_tokens=3
    )
    tokens.observe(gateway_pb2.ChatResponse(usage=usage))
    assert tokens.charge() == (110, 20)


def test_without_usage_the_relayed_text_is_estimated() -> None:
    tokens = TurnTokens(question_tokens=5)
    tokens.observe(delta("12345678"))
    tokens.observe(delta("9"))
    assert tokens.charge() == (5, 3)  # one token per four characters, rounded up


def test_nothing_relayed_or_a_replay_is_free() -> None:
    assert TurnTokens(question_tokens=5).charge() == (0, 0)
    replay = TurnTokens(question_tokens=5)
    replay.observe(gateway_pb2.ChatResponse(started=resources_pb2.TurnStarted(replayed=True)))
    replay.observe(delta("stored answer"))
    replay.observe(gateway_pb2.ChatResponse(usage=resources_pb2.Usage(output_tokens=9)))
    assert replay.charge() == (0, 0)


def test_reservation_estimate_is_the_question_and_the_most_the_model_may_answer() -> None:
    def gate(reserve: int) -> TokenQuotaGate:
        return TokenQuotaGate(
            None,  # type: ignore[arg-type]  (never called here)
            reserve_tokens=reserve,
            max_output_tokens=1024,
            turn_timeout_seconds=300,
            call_timeout_seconds=5,
        )

    assert gate(0).estimate("x" * 40) == 10 + 1024
    assert gate(256).estimate("x" * 40) == 256


def test_spent_quota_is_resource_exhausted_with_quota_failure_and_retry_info() -> None:
    reset = timestamp_pb2.Timestamp(seconds=int(time.time()) + 3600)
    quota = quota_pb2.TokenQuota(
        tenant_id="acme", tokens_per_day=1000, used_tokens=990, reserved_tokens=10, reset_time=reset
    )
    error = quota_exceeded(quota)
    assert 3590 < error.retry_after <= 3600
    status = to_status(error, "request-1")
    assert status.code.name == "RESOURCE_EXHAUSTED"
    stamp = reset.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
    assert stamp in status.details
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    details = status_pb2.Status.FromString(raw)
    failure = error_details_pb2.QuotaFailure()
    assert any(d.Unpack(failure) for d in details.details)
    assert failure.violations[0].subject == "tenant:acme"
    assert "1000 tokens" in failure.violations[0].description
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in details.details)

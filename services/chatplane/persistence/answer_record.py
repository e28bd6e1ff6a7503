"""The A/B variant fields of a `MessageRecorded` record (docs/variants.md) in their stored
form: an assistant message without a variant is "default"; a latency that is absent or
negative (a broken record) is stored as unmeasured rather than losing the message."""

from __future__ import annotations

from typing import TypedDict

from chatplane.internal.v1 import events_pb2
from chatplane.persistence.store.answer_metrics import DEFAULT_VARIANT
from chatplane.v1 import resources_pb2

# Longer identifiers are cut: NAME@VERSION fits easily.
_MAX_VARIANT_CHARS = 200


class AnswerMeasures(TypedDict):
    """Keyword arguments of the stored Message."""

    variant: str
    first_token_ms: int | None
    duration_ms: int | None


def _millis(recorded: events_pb2.MessageRecorded, field: str) -> int | None:
    if not recorded.HasField(field):  # type: ignore[arg-type]
        return None
    value: int = getattr(recorded, field)
    return value if value >= 0 else None


def answer_measures(recorded: events_pb2.MessageRecorded) -> AnswerMeasures:
    """The variant and latencies of an assistant message's record (nothing for a user's)."""
    if recorded.message.role != resources_pb2.ROLE_ASSISTANT:
        return AnswerMeasures(variant="", first_token_ms=None, duration_ms=None)
    return AnswerMeasures(
        variant=recorded.variant[:_MAX_VARIANT_CHARS] or DEFAULT_VARIANT,
        first_token_ms=_millis(recorded, "first_token_ms"),
        duration_ms=_millis(recorded, "duration_ms"),
    )

"""Reading one user's stored facts for an export (docs/privacy.md, "Export"): per message
of the user, what is stored beside it (the answer's variant and latencies, the user's
feedback).
Message text is not read here: messages come through the store's own read paths."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chatplane.persistence.store.base import Feedback, Rating
from chatplane.persistence.store.records import utc

DEFAULT_PAGE = 200
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What is stored about one of the user's messages besides the message itself: for an
    answer its variant and latencies (`variant` "" for a user message), and the user's
    feedback on it with when it was given (None: none)."""

    message_id: str
    conversation_id: str
    variant: str
    first_token_ms: int | None
    duration_ms: int | None
    feedback: Feedback | None
    feedback_time: datetime | None


def facts_query(*, after: bool) -> str:
    """The user's messages that have answer facts or feedback, in message id order, after a
    message id when `after`; parameters: tenant, user, [after,] limit."""
    return (
        "SELECT m.message_id, m.conversation_id, a.variant, a.first_token_ms, a.duration_ms,"
        " f.rating, f.score, f.comment, f.create_time"
        " FROM messages m"
        " LEFT JOIN answer_metrics a ON a.message_id = m.message_id"
        " LEFT JOIN feedback f ON f.message_id = m.message_id"
        " AND f.tenant_id = m.tenant_id AND f.user_id = m.user_id"
        " WHERE m.tenant_id = %s AND m.user_id = %s"
        + (" AND m.message_id > %s" if after else "")
        + " AND (a.message_id IS NOT NULL OR f.message_id IS NOT NULL)"
        " ORDER BY m.message_id LIMIT %s"
    )


def facts_parameters(tenant_id: str, user_id: str, after: str | None, limit: int) -> list[Any]:
    """The parameters of `facts_query`, in order."""
    return [tenant_id, user_id, *([after] if after is not None else []), limit]


def facts_from_row(row: Sequence[Any]) -> MessageFacts:
    """A row of `facts_query` as MessageFacts."""
    (message_id, conversation_id, variant, first_token_ms, duration_ms) = row[:5]
    rating, score, comment, feedback_time = row[5:9]
    feedback = (
        None if rating is None else Feedback(message_id, Rating(rating), comment or "", score)
    )
    return MessageFacts(
        message_id=message_id,
        conversation_id=conversation_id,
        variant=variant or "",
        first_token_ms=first_token_ms,
        duration_ms=duration_ms,
        feedback=feedback,
        feedback_time=None if feedback_time is None else utc(feedback_time),
    )

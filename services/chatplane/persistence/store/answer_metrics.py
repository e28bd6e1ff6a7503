"""A/B variant measurements and rated answers in the store: the `answer_metrics` row each
assistant message gets, and `store.analytics`: the per-variant report (docs/variants.md) and
the pages of rated answers for feedback datasets (docs/datasets.md), each one SQL query. Not
scoped to an owner: for admin tools only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chatplane.persistence.store.base import Message, Role
from chatplane.persistence.store.database import Database

DEFAULT_VARIANT = "default"
"""What an assistant message recorded without a variant is stored as."""

ANSWER_METRICS_COLUMNS = (
    "message_id, tenant_id, variant, status, input_tokens, output_tokens, first_token_ms,"
    " duration_ms"
)
"""The columns of `answer_metrics` besides its create time."""

_RATING = "coalesce(f.score, CASE WHEN f.rating = 'thumbs_up' THEN 5 ELSE 1 END)"


@dataclass(frozen=True, slots=True)
class VariantStats:
    """What the answers of one variant got. Means are None when nothing was there to
    average; latencies and tokens are averaged over complete answers only (an interrupted
    answer measures where it was cut, not the variant)."""

    variant: str
    answers: int
    interrupted_answers: int
    feedback_count: int
    scored_count: int
    mean_score: float | None
    thumbs_up_count: int
    mean_first_token_ms: float | None
    mean_duration_ms: float | None
    mean_input_tokens: float | None
    mean_output_tokens: float | None
    # Sum and sum of squares of the scores (the variance of the mean rating's
    # interval and of the comparison between variants; docs/variants.md).
    score_sum: int = 0
    score_square_sum: int = 0

    @property
    def thumbs_up_rate(self) -> float | None:
        """Thumbs up among the answers with feedback."""
        return self.thumbs_up_count / self.feedback_count if self.feedback_count else None


@dataclass(frozen=True, slots=True)
class RatedAnswerQuery:
    """Answers of `tenants` created in [since, until) whose rating is at least `min_rating`,
    after `after` ((create time, message id) of the previous page's last answer)."""

    tenants: tuple[str, ...]
    since: datetime
    until: datetime | None
    min_rating: int
    limit: int
    after: tuple[datetime, str] | None = None


@dataclass(frozen=True, slots=True)
class RatedAnswerRow:
    """One rated answer; `rating` is the score, or 5 / 1 for a thumbs up / down without one."""

    message_id: str
    tenant_id: str
    user_id: str
    conversation_id: str
    variant: str
    model: str
    thumbs_up: bool
    score: int | None
    rating: int
    create_time: datetime


def answer_metric_rows(messages: Sequence[Message]) -> list[tuple[Any, ...]]:
    """The `answer_metrics` rows of a batch's assistant messages: the ANSWER_METRICS_COLUMNS
    then the create time."""
    return [
        (
            m.message_id,
            m.owner.tenant_id,
            m.variant or DEFAULT_VARIANT,
            m.status.value,
            m.input_tokens,
            m.output_tokens,
            m.first_token_ms,
            m.duration_ms,
            m.create_time,
        )
        for m in messages
        if m.role is Role.ASSISTANT
    ]


def _complete_avg(column: str) -> str:
    return f"avg(CASE WHEN a.status = 'complete' THEN a.{column} END)::float8"


def _mean(value: Any) -> float | None:
    return None if value is None else float(value)


class AnswerAnalytics:
    """Reads over answers and their feedback."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def report_variants(
        self, tenant_id: str | None = None, since: datetime | None = None
    ) -> list[VariantStats]:
        """Answers and their feedback aggregated per A/B variant, by variant name: of one
        tenant (None: all) and created at or after `since` (None: all). Each average is cast
        to float8 (PostgreSQL's avg of integers is numeric)."""
        conditions: list[str] = []
        parameters: list[Any] = []
        if tenant_id is not None:
            conditions.append("a.tenant_id = %s")
            parameters.append(tenant_id)
        if since is not None:
            conditions.append("a.create_time >= %s")
            parameters.append(since)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        # Feedback can only come from the message's owner (the store checks it), so the
        # message id finds it; answer_metrics holds everything else, without the messages.
        query = (
            "SELECT a.variant, count(*),"
            " sum(CASE WHEN a.status = 'interrupted' THEN 1 ELSE 0 END),"
            " count(f.message_id), count(f.score), avg(f.score)::float8,"
            " sum(CASE WHEN f.rating = 'thumbs_up' THEN 1 ELSE 0 END),"
            f" {_complete_avg('first_token_ms')}, {_complete_avg('duration_ms')},"
            f" {_complete_avg('input_tokens')}, {_complete_avg('output_tokens')},"
            " coalesce(sum(f.score), 0), coalesce(sum(f.score * f.score), 0)"
            " FROM answer_metrics a LEFT JOIN feedback f ON f.message_id = a.message_id"
            f"{where} GROUP BY a.variant ORDER BY a.variant"
        )
        rows = await self._db.fetchall(query, parameters)
        return [
            VariantStats(
                variant=row[0],
                answers=int(row[1]),
                interrupted_answers=int(row[2]),
                feedback_count=int(row[3]),
                scored_count=int(row[4]),
                mean_score=_mean(row[5]),
                thumbs_up_count=int(row[6]),
                mean_first_token_ms=_mean(row[7]),
                mean_duration_ms=_mean(row[8]),
                mean_input_tokens=_mean(row[9]),
                mean_output_tokens=_mean(row[10]),
                score_sum=int(row[11]),
                score_square_sum=int(row[12]),
            )
            for row in rows
        ]

    async def rated_answers(self, query: RatedAnswerQuery) -> list[RatedAnswerRow]:
        """A page of complete, rated answers (feedback datasets, docs/datasets.md), by create
        time then message id."""
        if not query.tenants:
            return []
        conditions = [
            "a.status = 'complete'",
            "a.tenant_id = ANY(%s)",
            "a.create_time >= %s",
            f"{_RATING} >= %s",
        ]
        parameters: list[Any] = [list(query.tenants), query.since, query.min_rating]
        if query.until is not None:
            conditions.append("a.create_time < %s")
            parameters.append(query.until)
        if query.after is not None:
            conditions.append("(a.create_time, a.message_id) > (%s, %s)")
            parameters += list(query.after)
        sql = (
            "SELECT a.message_id, a.tenant_id, m.user_id, m.conversation_id, a.variant, m.model,"
            f" f.rating = 'thumbs_up', f.score, {_RATING}, a.create_time"
            " FROM answer_metrics a JOIN feedback f ON f.message_id = a.message_id"
            " JOIN messages m ON m.message_id = a.message_id"
            f" WHERE {' AND '.join(conditions)}"
            " ORDER BY a.create_time, a.message_id LIMIT %s"
        )
        rows = await self._db.fetchall(sql, [*parameters, query.limit])
        return [
            RatedAnswerRow(
                *(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6])),
                score=None if row[7] is None else int(row[7]),
                rating=int(row[8]),
                create_time=row[9],
            )
            for row in rows
        ]

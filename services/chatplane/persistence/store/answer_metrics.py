"""A/B variant measurements in the store (docs/variants.md): the `answer_metrics` row each
assistant message gets, and the per-variant report computed in one SQL query."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chatplane.persistence.store.base import Message, Role, VariantStats

__all__ = [
    "ANSWER_METRICS_COLUMNS",
    "DEFAULT_VARIANT",
    "VariantStats",
    "answer_metric_rows",
    "report_query",
    "stats_from_row",
]

DEFAULT_VARIANT = "default"
"""What an assistant message recorded without a variant is stored as."""

ANSWER_METRICS_COLUMNS = (
    "message_id, tenant_id, variant, status, input_tokens, output_tokens, first_token_ms,"
    " duration_ms"
)
"""The columns of `answer_metrics` besides its create time."""


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


def report_query(*, tenant: bool, since: bool) -> str:
    """The report's SQL: one row per variant in the order of VariantStats' fields; its
    parameters are the tenant id when `tenant`, then the time when `since`. Each average is
    cast to float8 (PostgreSQL's avg of integers is numeric)."""
    conditions = []
    if tenant:
        conditions.append("a.tenant_id = %s")
    if since:
        conditions.append("a.create_time >= %s")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""

    def complete_avg(column: str) -> str:
        return f"avg(CASE WHEN a.status = 'complete' THEN a.{column} END)::float8"

    # Feedback can only come from the message's owner (the stores check it), so the message
    # id finds it; answer_metrics holds everything else, without reading the messages.
    return (
        "SELECT a.variant, count(*),"
        " sum(CASE WHEN a.status = 'interrupted' THEN 1 ELSE 0 END),"
        f" count(f.message_id), count(f.score), avg(f.score)::float8,"
        " sum(CASE WHEN f.rating = 'thumbs_up' THEN 1 ELSE 0 END),"
        f" {complete_avg('first_token_ms')}, {complete_avg('duration_ms')},"
        f" {complete_avg('input_tokens')}, {complete_avg('output_tokens')},"
        " coalesce(sum(f.score), 0), coalesce(sum(f.score * f.score), 0)"
        " FROM answer_metrics a LEFT JOIN feedback f ON f.message_id = a.message_id"
        f"{where} GROUP BY a.variant ORDER BY a.variant"
    )


def stats_from_row(row: Sequence[Any]) -> VariantStats:
    """A VariantStats from a row of `report_query`."""

    def mean(value: Any) -> float | None:
        return None if value is None else float(value)

    return VariantStats(
        variant=row[0],
        answers=int(row[1]),
        interrupted_answers=int(row[2]),
        feedback_count=int(row[3]),
        scored_count=int(row[4]),
        mean_score=mean(row[5]),
        thumbs_up_count=int(row[6]),
        mean_first_token_ms=mean(row[7]),
        mean_duration_ms=mean(row[8]),
        mean_input_tokens=mean(row[9]),
        mean_output_tokens=mean(row[10]),
        score_sum=int(row[11]),
        score_square_sum=int(row[12]),
    )

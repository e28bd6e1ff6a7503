"""Rated answers for feedback datasets (docs/datasets.md): the SQL that pages the complete,
rated answers of some tenants in a time range, and the row it yields."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any


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


RATING_SQL = "coalesce(f.score, CASE WHEN f.rating = 'thumbs_up' THEN 5 ELSE 1 END)"


def rated_answers_sql(query: RatedAnswerQuery) -> tuple[str, list[Any]]:
    """The page's SQL and parameters."""
    conditions = [
        "a.status = 'complete'",
        "a.tenant_id = ANY(%s)",
        "a.create_time >= %s",
        f"{RATING_SQL} >= %s",
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
        f" f.rating = 'thumbs_up', f.score, {RATING_SQL}, a.create_time"
        " FROM answer_metrics a JOIN feedback f ON f.message_id = a.message_id"
        " JOIN messages m ON m.message_id = a.message_id"
        f" WHERE {' AND '.join(conditions)}"
        " ORDER BY a.create_time, a.message_id LIMIT %s"
    )
    return sql, [*parameters, query.limit]


def row_of(row: Sequence[Any]) -> RatedAnswerRow:
    """A RatedAnswerRow from a row of `rated_answers_sql`."""
    return RatedAnswerRow(
        message_id=row[0],
        tenant_id=row[1],
        user_id=row[2],
        conversation_id=row[3],
        variant=row[4],
        model=row[5],
        thumbs_up=bool(row[6]),
        score=None if row[7] is None else int(row[7]),
        rating=int(row[8]),
        create_time=row[9],
    )

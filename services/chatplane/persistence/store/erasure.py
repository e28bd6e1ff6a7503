"""Erasure jobs and retention periods in the system of record: the records and the SQL of the
store's erasure and retention methods, each function inside the caller's transaction where it
writes (docs/privacy.md).

An erasure is a job of ordered steps (destroy the user's data key, delete their rows, their
memory, their log records). The job and each step's outcome are stored as they happen, so a
job cut short by a crash is resumed where it stopped; every step is idempotent, so running
one twice removes nothing more. The job's row stays as the proof of the erasure (ids and
counts, never content).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import psycopg

from chatplane.common import errors
from chatplane.common.ids import new_id
from chatplane.persistence.store import key_records
from chatplane.persistence.store.key_records import AuditActor

if TYPE_CHECKING:
    from chatplane.audit.chain import AuditEvent

USER_ERASE: Final = "user.erase"
"""The audit action of an erasure (chatplane.audit names the same string)."""

MAX_RETENTION_DAYS: Final = 36_500
"""The longest retention period that may be set (100 years); longer is "forever" (0)."""

# Every table the erasure of a user removes rows from, in the order they are deleted (the
# ones that reference messages before messages, messages before conversations).
ERASED_TABLES: Final = (
    "feedback",
    "answer_deltas",
    "answer_metrics",
    "handoffs",
    "turns",
    "messages",
    "conversations",
    "api_keys",
)
# Tombstones of deleted conversations keep their id (so that a late log record never brings
# one back) but lose the user's id: counted under this name.
ANONYMISED_TOMBSTONES: Final = "deleted_conversations"


@dataclass(frozen=True, slots=True)
class ErasureStep:
    """One step of an erasure job; `finish_time` None while it is still to run."""

    name: str
    removed: Mapping[str, int] = field(default_factory=dict)
    finish_time: datetime | None = None

    @property
    def done(self) -> bool:
        """True once the step ran to its end."""
        return self.finish_time is not None


@dataclass(frozen=True, slots=True)
class ErasureJob:
    """An erasure of one user of one tenant and its progress."""

    job_id: str
    tenant_id: str
    user_id: str
    actor: AuditActor
    conversation_ids: tuple[str, ...]
    create_time: datetime
    steps: tuple[ErasureStep, ...]
    finish_time: datetime | None = None

    @property
    def finished(self) -> bool:
        """True once every step ran and the erasure was audited."""
        return self.finish_time is not None

    def audit_object(self) -> str:
        """The erased user as the audit log names them."""
        return f"user/{self.tenant_id}/{self.user_id}"

    def audit_detail(self) -> str:
        """What the audit record says: the job and the counts per step (no content)."""
        counts = {step.name: dict(step.removed) for step in self.steps}
        return json.dumps({"job_id": self.job_id, "removed": counts}, sort_keys=True)


def erasure_event(job: ErasureJob) -> AuditEvent:
    """The one audit record of a finished erasure (ids and counts only)."""
    return job.actor.event(
        tenant_id=job.tenant_id,
        action=USER_ERASE,
        object=job.audit_object(),
        detail=job.audit_detail(),
    )


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """A tenant's retention period: conversations without activity for `days` are deleted;
    0 days means none is set (keep forever)."""

    tenant_id: str
    days: int
    update_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class ExpiredConversation:
    """A conversation the retention sweep deleted."""

    tenant_id: str
    user_id: str
    conversation_id: str


def require_retention_days(days: int) -> None:
    """InvalidArgument unless 0 (no period) <= days <= MAX_RETENTION_DAYS."""
    if not 0 <= days <= MAX_RETENTION_DAYS:
        raise errors.InvalidArgument(
            "days", f"must be between 0 (keep forever) and {MAX_RETENTION_DAYS}"
        )


def removed_column(removed: Mapping[str, int]) -> str:
    """The stored form of a step's counts."""
    return json.dumps(dict(removed), sort_keys=True)


def removed_from_column(value: str) -> dict[str, int]:
    """A step's counts from their stored form."""
    loaded = json.loads(value or "{}")
    return {str(name): int(count) for name, count in loaded.items()}


def ids_column(ids: Sequence[str]) -> str:
    """Conversation ids as one column (ids never contain spaces)."""
    return " ".join(ids)


def ids_from_column(value: str) -> tuple[str, ...]:
    """Conversation ids from their stored form."""
    return tuple(value.split())


Connection = psycopg.AsyncConnection[tuple[Any, ...]]

_JOB_COLUMNS = (
    "job_id, tenant_id, user_id, actor, source, request_id, conversation_ids, create_time,"
    " finish_time"
)


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC)


async def user_conversations(connection: Connection, tenant_id: str, user_id: str) -> list[str]:
    """The user's conversation ids, deleted ones included."""
    cursor = await connection.execute(
        "SELECT conversation_id FROM conversations WHERE tenant_id = %(t)s AND user_id = %(u)s"
        " UNION SELECT conversation_id FROM deleted_conversations"
        " WHERE tenant_id = %(t)s AND user_id = %(u)s ORDER BY 1",
        {"t": tenant_id, "u": user_id},
    )
    return [str(row[0]) for row in await cursor.fetchall()]


async def start(
    connection: Connection,
    tenant_id: str,
    user_id: str,
    steps: Sequence[str],
    actor: AuditActor,
    now: datetime,
) -> ErasureJob:
    """See PostgresConversationStore.start_erasure."""
    cursor = await connection.execute(
        "SELECT job_id FROM erasure_jobs"
        " WHERE tenant_id = %s AND user_id = %s AND finish_time IS NULL",
        (tenant_id, user_id),
    )
    row = await cursor.fetchone()
    if row is not None:
        return await load(connection, str(row[0]))
    job_id = new_id()
    # Two concurrent first calls: one inserts, the other finds its job (unique index).
    cursor = await connection.execute(
        f"INSERT INTO erasure_jobs ({_JOB_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, NULL)"
        " ON CONFLICT DO NOTHING",
        (
            job_id,
            tenant_id,
            user_id,
            actor.actor,
            actor.source,
            actor.request_id,
            ids_column(await user_conversations(connection, tenant_id, user_id)),
            now,
        ),
    )
    if cursor.rowcount == 0:
        raise errors.Unavailable("another erasure of this user started at this moment; retry")
    async with connection.cursor() as insert:
        await insert.executemany(
            "INSERT INTO erasure_steps (job_id, position, step) VALUES (%s, %s, %s)",
            [(job_id, position, step) for position, step in enumerate(steps)],
        )
    return await load(connection, job_id)


async def load(connection: Connection, job_id: str) -> ErasureJob:
    """The job with its steps (NotFound when there is none)."""
    cursor = await connection.execute(
        f"SELECT {_JOB_COLUMNS} FROM erasure_jobs WHERE job_id = %s", (job_id,)
    )
    row = await cursor.fetchone()
    if row is None:
        raise errors.NotFound("erasure job not found")
    steps_cursor = await connection.execute(
        "SELECT step, removed, finish_time FROM erasure_steps WHERE job_id = %s ORDER BY position",
        (job_id,),
    )
    steps = tuple(
        ErasureStep(name=str(step), removed=removed_from_column(str(removed)), finish_time=_utc(at))
        for step, removed, at in await steps_cursor.fetchall()
    )
    return ErasureJob(
        job_id=str(row[0]),
        tenant_id=str(row[1]),
        user_id=str(row[2]),
        actor=AuditActor(actor=str(row[3]), source=str(row[4]), request_id=str(row[5])),
        conversation_ids=ids_from_column(str(row[6])),
        create_time=row[7].astimezone(UTC),
        steps=steps,
        finish_time=_utc(row[8]),
    )


async def unfinished(connection: Connection) -> list[ErasureJob]:
    """See PostgresConversationStore.unfinished_erasures."""
    cursor = await connection.execute(
        "SELECT job_id FROM erasure_jobs WHERE finish_time IS NULL ORDER BY create_time"
    )
    return [await load(connection, str(row[0])) for row in await cursor.fetchall()]


async def finish_step(
    connection: Connection, job_id: str, position: int, removed: Mapping[str, int], now: datetime
) -> ErasureJob:
    """See PostgresConversationStore.finish_erasure_step."""
    await connection.execute(
        "UPDATE erasure_steps SET removed = %s, finish_time = %s"
        " WHERE job_id = %s AND position = %s AND finish_time IS NULL",
        (removed_column(removed), now, job_id, position),
    )
    return await load(connection, job_id)


async def finish(connection: Connection, job_id: str, now: datetime) -> ErasureJob:
    """See PostgresConversationStore.finish_erasure."""
    cursor = await connection.execute(
        "SELECT finish_time FROM erasure_jobs WHERE job_id = %s FOR UPDATE", (job_id,)
    )
    row = await cursor.fetchone()
    if row is None:
        raise errors.NotFound("erasure job not found")
    if row[0] is None:
        await connection.execute(
            "UPDATE erasure_jobs SET finish_time = %s WHERE job_id = %s", (now, job_id)
        )
        job = await load(connection, job_id)
        await key_records.append(connection, [erasure_event(job)], now)
    return await load(connection, job_id)


_CONVERSATIONS = (
    "SELECT conversation_id FROM conversations WHERE tenant_id = %(t)s AND user_id = %(u)s"
)
_MESSAGES = (
    "SELECT message_id FROM messages WHERE tenant_id = %(t)s AND (user_id = %(u)s"
    f" OR conversation_id IN ({_CONVERSATIONS}))"
)
_OWNER = "tenant_id = %(t)s AND user_id = %(u)s"
_ERASE: tuple[tuple[str, str], ...] = (
    ("feedback", f"({_OWNER}) OR message_id IN ({_MESSAGES})"),
    ("answer_deltas", f"message_id IN ({_MESSAGES})"),
    ("answer_metrics", f"message_id IN ({_MESSAGES})"),
    ("handoffs", f"({_OWNER}) OR conversation_id IN ({_CONVERSATIONS})"),
    ("turns", f"({_OWNER}) OR conversation_id IN ({_CONVERSATIONS})"),
    ("messages", f"({_OWNER}) OR conversation_id IN ({_CONVERSATIONS})"),
    ("conversations", _OWNER),
    ("api_keys", _OWNER),
)


async def erase_rows(
    connection: Connection, tenant_id: str, user_id: str, now: datetime
) -> dict[str, int]:
    """See PostgresConversationStore.erase_user_rows (the caller holds the conversations' locks)."""
    owner = {"t": tenant_id, "u": user_id, "now": now}
    removed: dict[str, int] = {}
    cursor = await connection.execute(
        "UPDATE deleted_conversations SET user_id = '' WHERE tenant_id = %(t)s AND user_id = %(u)s",
        owner,
    )
    removed[ANONYMISED_TOMBSTONES] = cursor.rowcount
    # Tombstones (without the user) first: a late log record never brings a conversation back.
    await connection.execute(
        "INSERT INTO deleted_conversations (conversation_id, tenant_id, user_id, delete_time)"
        f" SELECT conversation_id, tenant_id, '', %(now)s FROM conversations WHERE {_OWNER}"
        " ON CONFLICT DO NOTHING",
        owner,
    )
    for table, where in _ERASE:
        cursor = await connection.execute(f"DELETE FROM {table} WHERE {where}", owner)
        removed[table] = cursor.rowcount
    return removed


async def set_policy(
    connection: Connection, tenant_id: str, days: int, now: datetime
) -> RetentionPolicy:
    """See PostgresConversationStore.set_retention."""
    if days == 0:
        await connection.execute(
            "DELETE FROM retention_policies WHERE tenant_id = %s", (tenant_id,)
        )
    else:
        await connection.execute(
            "INSERT INTO retention_policies (tenant_id, days, update_time) VALUES (%s, %s, %s)"
            " ON CONFLICT (tenant_id) DO UPDATE SET days = excluded.days,"
            " update_time = excluded.update_time",
            (tenant_id, days, now),
        )
    return await policy(connection, tenant_id)


async def policy(connection: Connection, tenant_id: str) -> RetentionPolicy:
    """See PostgresConversationStore.get_retention."""
    cursor = await connection.execute(
        "SELECT days, update_time FROM retention_policies WHERE tenant_id = %s", (tenant_id,)
    )
    row = await cursor.fetchone()
    if row is None:
        return RetentionPolicy(tenant_id, 0)
    return RetentionPolicy(tenant_id, int(row[0]), row[1].astimezone(UTC))


async def policies(connection: Connection) -> list[RetentionPolicy]:
    """See PostgresConversationStore.retention_policies."""
    cursor = await connection.execute(
        "SELECT tenant_id, days, update_time FROM retention_policies ORDER BY tenant_id"
    )
    return [
        RetentionPolicy(str(t), int(d), u.astimezone(UTC)) for t, d, u in await cursor.fetchall()
    ]


async def expiring(
    connection: Connection, tenant_id: str, before: datetime, limit: int
) -> list[str]:
    """Up to `limit` of the tenant's conversations without activity since `before`."""
    cursor = await connection.execute(
        "SELECT conversation_id FROM conversations WHERE tenant_id = %s AND update_time < %s"
        " ORDER BY update_time LIMIT %s",
        (tenant_id, before, limit),
    )
    return [str(row[0]) for row in await cursor.fetchall()]


async def expire(
    connection: Connection,
    tenant_id: str,
    conversation_ids: Sequence[str],
    before: datetime,
    now: datetime,
) -> list[ExpiredConversation]:
    """Deletes those of the conversations still without activity since `before` (the caller
    holds their locks), tombstone included; the ones deleted."""
    cursor = await connection.execute(
        "WITH deleted AS (DELETE FROM conversations"
        "  WHERE conversation_id = ANY(%s) AND tenant_id = %s AND update_time < %s"
        "  RETURNING conversation_id, tenant_id, user_id)"
        " INSERT INTO deleted_conversations (conversation_id, tenant_id, user_id, delete_time)"
        " SELECT conversation_id, tenant_id, user_id, %s FROM deleted"
        " ON CONFLICT DO NOTHING"
        " RETURNING conversation_id, user_id",
        (list(conversation_ids), tenant_id, before, now),
    )
    expired = [
        ExpiredConversation(tenant_id, str(user), str(conv))
        for conv, user in await cursor.fetchall()
    ]
    async with connection.cursor() as insert:
        await insert.executemany(
            "INSERT INTO retention_pending (conversation_id, tenant_id, user_id)"
            " VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            [(e.conversation_id, e.tenant_id, e.user_id) for e in expired],
        )
    return expired


async def pending(connection: Connection, limit: int) -> list[ExpiredConversation]:
    """See PostgresConversationStore.pending_expiries."""
    cursor = await connection.execute(
        "SELECT tenant_id, user_id, conversation_id FROM retention_pending"
        " ORDER BY conversation_id LIMIT %s",
        (limit,),
    )
    return [ExpiredConversation(str(t), str(u), str(c)) for t, u, c in await cursor.fetchall()]


async def finish_pending(connection: Connection, conversation_ids: Sequence[str]) -> None:
    """See PostgresConversationStore.finish_expiries."""
    await connection.execute(
        "DELETE FROM retention_pending WHERE conversation_id = ANY(%s)", (list(conversation_ids),)
    )

"""Erasure jobs and retention on PostgreSQL; each function runs inside the caller's
transaction where it writes (docs/privacy.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg

from chatplane.common import errors
from chatplane.common.ids import new_id
from chatplane.persistence.store import postgres_identity
from chatplane.persistence.store.erasure import (
    ANONYMISED_TOMBSTONES,
    ErasureJob,
    ErasureStep,
    ExpiredConversation,
    RetentionPolicy,
    erasure_event,
    ids_column,
    ids_from_column,
    removed_column,
    removed_from_column,
)
from chatplane.persistence.store.key_records import AuditActor

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
    """See ErasureLedger.start_erasure."""
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
    """See ErasureLedger.unfinished_erasures."""
    cursor = await connection.execute(
        "SELECT job_id FROM erasure_jobs WHERE finish_time IS NULL ORDER BY create_time"
    )
    return [await load(connection, str(row[0])) for row in await cursor.fetchall()]


async def finish_step(
    connection: Connection, job_id: str, position: int, removed: Mapping[str, int], now: datetime
) -> ErasureJob:
    """See ErasureLedger.finish_erasure_step."""
    await connection.execute(
        "UPDATE erasure_steps SET removed = %s, finish_time = %s"
        " WHERE job_id = %s AND position = %s AND finish_time IS NULL",
        (removed_column(removed), now, job_id, position),
    )
    return await load(connection, job_id)


async def finish(connection: Connection, job_id: str, now: datetime) -> ErasureJob:
    """See ErasureLedger.finish_erasure."""
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
        await postgres_identity.append(connection, [erasure_event(job)], now)
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
    """See ErasureLedger.erase_user_rows (the caller holds the conversations' locks)."""
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
    """See ErasureLedger.set_retention."""
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
    """See ErasureLedger.get_retention."""
    cursor = await connection.execute(
        "SELECT days, update_time FROM retention_policies WHERE tenant_id = %s", (tenant_id,)
    )
    row = await cursor.fetchone()
    if row is None:
        return RetentionPolicy(tenant_id, 0)
    return RetentionPolicy(tenant_id, int(row[0]), row[1].astimezone(UTC))


async def policies(connection: Connection) -> list[RetentionPolicy]:
    """See ErasureLedger.retention_policies."""
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
    """See ErasureLedger.pending_expiries."""
    cursor = await connection.execute(
        "SELECT tenant_id, user_id, conversation_id FROM retention_pending"
        " ORDER BY conversation_id LIMIT %s",
        (limit,),
    )
    return [ExpiredConversation(str(t), str(u), str(c)) for t, u, c in await cursor.fetchall()]


async def finish_pending(connection: Connection, conversation_ids: Sequence[str]) -> None:
    """See ErasureLedger.finish_expiries."""
    await connection.execute(
        "DELETE FROM retention_pending WHERE conversation_id = ANY(%s)", (list(conversation_ids),)
    )

"""Erasure jobs and retention on the embedded store (SQLite); each function runs inside the
caller's write transaction (BEGIN IMMEDIATE) or read (docs/privacy.md)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime

from chatplane.audit.chain import AuditEvent
from chatplane.common import errors
from chatplane.common.ids import new_id
from chatplane.persistence.store.base import from_micros, to_micros
from chatplane.persistence.store.erasure import (
    ANONYMISED_TOMBSTONES,
    USER_ERASE,
    ErasureJob,
    ErasureStep,
    ExpiredConversation,
    RetentionPolicy,
    ids_column,
    ids_from_column,
    removed_column,
    removed_from_column,
)
from chatplane.persistence.store.key_records import AuditActor
from chatplane.persistence.store.sqlite_identity import _append as append_audit_events

_JOB_COLUMNS = (
    "job_id, tenant_id, user_id, actor, source, request_id, conversation_ids, create_time_us,"
    " finish_time_us"
)


def start(
    connection: sqlite3.Connection,
    tenant_id: str,
    user_id: str,
    steps: Sequence[str],
    actor: AuditActor,
    now: datetime,
) -> ErasureJob:
    """See ErasureLedger.start_erasure."""
    row = connection.execute(
        "SELECT job_id FROM erasure_jobs"
        " WHERE tenant_id = ? AND user_id = ? AND finish_time_us IS NULL",
        (tenant_id, user_id),
    ).fetchone()
    if row is not None:
        return load(connection, str(row[0]))
    conversations = [
        str(conversation_id)
        for (conversation_id,) in connection.execute(
            "SELECT conversation_id FROM conversations WHERE tenant_id = ? AND user_id = ?"
            " UNION SELECT conversation_id FROM deleted_conversations"
            " WHERE tenant_id = ? AND user_id = ? ORDER BY 1",
            (tenant_id, user_id, tenant_id, user_id),
        )
    ]
    job_id = new_id()
    connection.execute(
        f"INSERT INTO erasure_jobs ({_JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
        (
            job_id,
            tenant_id,
            user_id,
            actor.actor,
            actor.source,
            actor.request_id,
            ids_column(conversations),
            to_micros(now),
        ),
    )
    connection.executemany(
        "INSERT INTO erasure_steps (job_id, position, step) VALUES (?, ?, ?)",
        [(job_id, position, step) for position, step in enumerate(steps)],
    )
    return load(connection, job_id)


def load(connection: sqlite3.Connection, job_id: str) -> ErasureJob:
    """The job with its steps (NotFound when there is none)."""
    row = connection.execute(
        f"SELECT {_JOB_COLUMNS} FROM erasure_jobs WHERE job_id = ?", (job_id,)
    ).fetchone()
    if row is None:
        raise errors.NotFound("erasure job not found")
    steps = tuple(
        ErasureStep(
            name=str(step),
            removed=removed_from_column(str(removed)),
            finish_time=None if finished is None else from_micros(int(finished)),
        )
        for step, removed, finished in connection.execute(
            "SELECT step, removed, finish_time_us FROM erasure_steps WHERE job_id = ?"
            " ORDER BY position",
            (job_id,),
        )
    )
    return ErasureJob(
        job_id=str(row[0]),
        tenant_id=str(row[1]),
        user_id=str(row[2]),
        actor=AuditActor(actor=str(row[3]), source=str(row[4]), request_id=str(row[5])),
        conversation_ids=ids_from_column(str(row[6])),
        create_time=from_micros(int(row[7])),
        steps=steps,
        finish_time=None if row[8] is None else from_micros(int(row[8])),
    )


def unfinished(connection: sqlite3.Connection) -> list[ErasureJob]:
    """See ErasureLedger.unfinished_erasures."""
    rows = connection.execute(
        "SELECT job_id FROM erasure_jobs WHERE finish_time_us IS NULL ORDER BY create_time_us"
    ).fetchall()
    return [load(connection, str(job_id)) for (job_id,) in rows]


def finish_step(
    connection: sqlite3.Connection,
    job_id: str,
    position: int,
    removed: Mapping[str, int],
    now: datetime,
) -> ErasureJob:
    """See ErasureLedger.finish_erasure_step."""
    connection.execute(
        "UPDATE erasure_steps SET removed = ?, finish_time_us = ?"
        " WHERE job_id = ? AND position = ? AND finish_time_us IS NULL",
        (removed_column(removed), to_micros(now), job_id, position),
    )
    return load(connection, job_id)


def finish(connection: sqlite3.Connection, job_id: str, now: datetime) -> ErasureJob:
    """See ErasureLedger.finish_erasure."""
    job = load(connection, job_id)
    if job.finished:
        return job
    connection.execute(
        "UPDATE erasure_jobs SET finish_time_us = ? WHERE job_id = ?", (to_micros(now), job_id)
    )
    append_audit_events(connection, [erasure_event(job)], now)
    return load(connection, job_id)


def erasure_event(job: ErasureJob) -> AuditEvent:
    """The one audit record of a finished erasure (ids and counts only)."""
    return job.actor.event(
        tenant_id=job.tenant_id,
        action=USER_ERASE,
        object=job.audit_object(),
        detail=job.audit_detail(),
    )


# The user's conversations, and every message of the user or in those conversations.
_CONVERSATIONS = "SELECT conversation_id FROM conversations WHERE tenant_id = ? AND user_id = ?"
_MESSAGES = (
    "SELECT message_id FROM messages WHERE tenant_id = ? AND (user_id = ?"
    f" OR conversation_id IN ({_CONVERSATIONS}))"
)
_OWNER = "tenant_id = ? AND user_id = ?"
_ERASE: tuple[tuple[str, str, int], ...] = (
    # (table, WHERE clause, how many times the (tenant, user) pair is bound)
    ("feedback", f"({_OWNER}) OR message_id IN ({_MESSAGES})", 3),
    ("answer_deltas", f"message_id IN ({_MESSAGES})", 2),
    ("answer_metrics", f"message_id IN ({_MESSAGES})", 2),
    ("handoffs", f"({_OWNER}) OR conversation_id IN ({_CONVERSATIONS})", 2),
    ("turns", f"({_OWNER}) OR conversation_id IN ({_CONVERSATIONS})", 2),
    ("messages", f"({_OWNER}) OR conversation_id IN ({_CONVERSATIONS})", 2),
    ("conversations", _OWNER, 1),
    ("api_keys", _OWNER, 1),
)


def erase_rows(
    connection: sqlite3.Connection, tenant_id: str, user_id: str, now: datetime
) -> dict[str, int]:
    """See ErasureLedger.erase_user_rows."""
    removed: dict[str, int] = {}
    removed[ANONYMISED_TOMBSTONES] = connection.execute(
        "UPDATE deleted_conversations SET user_id = '' WHERE tenant_id = ? AND user_id = ?",
        (tenant_id, user_id),
    ).rowcount
    # Tombstones (without the user) first: a late log record never brings a conversation back.
    connection.execute(
        "INSERT OR IGNORE INTO deleted_conversations"
        " (conversation_id, tenant_id, user_id, delete_time_us)"
        f" SELECT conversation_id, tenant_id, '', ? FROM conversations WHERE {_OWNER}",
        (to_micros(now), tenant_id, user_id),
    )
    for table, where, pairs in _ERASE:
        removed[table] = connection.execute(
            f"DELETE FROM {table} WHERE {where}", (tenant_id, user_id) * pairs
        ).rowcount
    return removed


def set_policy(
    connection: sqlite3.Connection, tenant_id: str, days: int, now: datetime
) -> RetentionPolicy:
    """See ErasureLedger.set_retention."""
    if days == 0:
        connection.execute("DELETE FROM retention_policies WHERE tenant_id = ?", (tenant_id,))
    else:
        connection.execute(
            "INSERT INTO retention_policies (tenant_id, days, update_time_us) VALUES (?, ?, ?)"
            " ON CONFLICT (tenant_id) DO UPDATE SET days = excluded.days,"
            " update_time_us = excluded.update_time_us",
            (tenant_id, days, to_micros(now)),
        )
    return policy(connection, tenant_id)


def policy(connection: sqlite3.Connection, tenant_id: str) -> RetentionPolicy:
    """See ErasureLedger.get_retention."""
    row = connection.execute(
        "SELECT days, update_time_us FROM retention_policies WHERE tenant_id = ?", (tenant_id,)
    ).fetchone()
    if row is None:
        return RetentionPolicy(tenant_id, 0)
    return RetentionPolicy(tenant_id, int(row[0]), from_micros(int(row[1])))


def policies(connection: sqlite3.Connection) -> list[RetentionPolicy]:
    """See ErasureLedger.retention_policies."""
    rows = connection.execute(
        "SELECT tenant_id, days, update_time_us FROM retention_policies ORDER BY tenant_id"
    ).fetchall()
    return [RetentionPolicy(str(t), int(d), from_micros(int(u))) for t, d, u in rows]


def expire(
    connection: sqlite3.Connection, tenant_id: str, before: datetime, limit: int, now: datetime
) -> list[ExpiredConversation]:
    """See ErasureLedger.expire_conversations."""
    rows = connection.execute(
        "SELECT conversation_id, user_id FROM conversations"
        " WHERE tenant_id = ? AND update_time_us < ? ORDER BY update_time_us LIMIT ?",
        (tenant_id, to_micros(before), limit),
    ).fetchall()
    expired = [ExpiredConversation(tenant_id, str(user), str(conv)) for conv, user in rows]
    for conversation in expired:
        connection.execute(
            "INSERT OR IGNORE INTO deleted_conversations"
            " (conversation_id, tenant_id, user_id, delete_time_us) VALUES (?, ?, ?, ?)",
            (conversation.conversation_id, tenant_id, conversation.user_id, to_micros(now)),
        )
        connection.execute(
            "INSERT OR IGNORE INTO retention_pending (conversation_id, tenant_id, user_id)"
            " VALUES (?, ?, ?)",
            (conversation.conversation_id, tenant_id, conversation.user_id),
        )
        # Messages, their feedback, deltas, metrics, turns and handoff go with it (CASCADE).
        connection.execute(
            "DELETE FROM conversations WHERE conversation_id = ?", (conversation.conversation_id,)
        )
    return expired


def pending(connection: sqlite3.Connection, limit: int) -> list[ExpiredConversation]:
    """See ErasureLedger.pending_expiries."""
    rows = connection.execute(
        "SELECT tenant_id, user_id, conversation_id FROM retention_pending ORDER BY rowid LIMIT ?",
        (limit,),
    ).fetchall()
    return [ExpiredConversation(str(t), str(u), str(c)) for t, u, c in rows]


def finish_pending(connection: sqlite3.Connection, conversation_ids: Sequence[str]) -> None:
    """See ErasureLedger.finish_expiries."""
    connection.executemany(
        "DELETE FROM retention_pending WHERE conversation_id = ?",
        [(conversation_id,) for conversation_id in conversation_ids],
    )

"""Erasure jobs (`store.erasures`) and retention periods (`store.retention`) in the system of
record, each change in one transaction (docs/privacy.md).

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
from typing import Final

from chatplane.audit.chain import AuditEvent
from chatplane.common import errors
from chatplane.common.ids import new_id
from chatplane.persistence.store import key_records
from chatplane.persistence.store.base import require_limit
from chatplane.persistence.store.database import (
    LOCK_CONVERSATIONS,
    Connection,
    Database,
    conversation_locks,
    found,
)
from chatplane.persistence.store.key_records import AuditActor

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

    def audit_event(self) -> AuditEvent:
        """The one audit record of a finished erasure: the erased user, the job and the counts
        per step (ids and counts, no content)."""
        counts = {step.name: dict(step.removed) for step in self.steps}
        return self.actor.event(
            tenant_id=self.tenant_id,
            action=USER_ERASE,
            object=f"user/{self.tenant_id}/{self.user_id}",
            detail=json.dumps({"job_id": self.job_id, "removed": counts}, sort_keys=True),
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


_JOB_COLUMNS = (
    "job_id, tenant_id, user_id, actor, source, request_id, conversation_ids, create_time,"
    " finish_time"
)


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC)


async def _user_conversations(connection: Connection, tenant_id: str, user_id: str) -> list[str]:
    """The user's conversation ids, deleted ones included."""
    cursor = await connection.execute(
        "SELECT conversation_id FROM conversations WHERE tenant_id = %(t)s AND user_id = %(u)s"
        " UNION SELECT conversation_id FROM deleted_conversations"
        " WHERE tenant_id = %(t)s AND user_id = %(u)s ORDER BY 1",
        {"t": tenant_id, "u": user_id},
    )
    return [str(row[0]) for row in await cursor.fetchall()]


async def _load(connection: Connection, job_id: str) -> ErasureJob:
    """The job with its steps (NotFound when there is none)."""
    cursor = await connection.execute(
        f"SELECT {_JOB_COLUMNS} FROM erasure_jobs WHERE job_id = %s", (job_id,)
    )
    row = found(await cursor.fetchone(), "erasure job")
    steps_cursor = await connection.execute(
        "SELECT step, removed, finish_time FROM erasure_steps WHERE job_id = %s ORDER BY position",
        (job_id,),
    )
    steps = tuple(
        ErasureStep(
            name=str(step),
            removed={str(n): int(c) for n, c in json.loads(str(removed) or "{}").items()},
            finish_time=_utc(at),
        )
        for step, removed, at in await steps_cursor.fetchall()
    )
    return ErasureJob(
        job_id=str(row[0]),
        tenant_id=str(row[1]),
        user_id=str(row[2]),
        actor=AuditActor(actor=str(row[3]), source=str(row[4]), request_id=str(row[5])),
        conversation_ids=tuple(str(row[6]).split()),  # ids never contain spaces
        create_time=row[7].astimezone(UTC),
        steps=steps,
        finish_time=_utc(row[8]),
    )


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


class Erasures:
    """The erasure ledger (`erasure_jobs`, `erasure_steps`) and the erasure of a user's rows."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def start(
        self, tenant_id: str, user_id: str, steps: Sequence[str], actor: AuditActor
    ) -> ErasureJob:
        """The user's unfinished erasure job, or a new one with `steps` to run (and a snapshot
        of the user's conversation ids, deleted ones included)."""
        now = self._db.clock()
        async with self._db.transaction() as connection:
            cursor = await connection.execute(
                "SELECT job_id FROM erasure_jobs"
                " WHERE tenant_id = %s AND user_id = %s AND finish_time IS NULL",
                (tenant_id, user_id),
            )
            row = await cursor.fetchone()
            if row is not None:
                return await _load(connection, str(row[0]))
            job_id = new_id()
            conversations = await _user_conversations(connection, tenant_id, user_id)
            values = (job_id, tenant_id, user_id, actor.actor, actor.source, actor.request_id)
            # Two concurrent first calls: one inserts, the other finds its job (unique index).
            cursor = await connection.execute(
                f"INSERT INTO erasure_jobs ({_JOB_COLUMNS})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, NULL) ON CONFLICT DO NOTHING",
                (*values, " ".join(conversations), now),
            )
            if cursor.rowcount == 0:
                raise errors.Unavailable(
                    "another erasure of this user started at this moment; retry"
                )
            async with connection.cursor() as insert:
                await insert.executemany(
                    "INSERT INTO erasure_steps (job_id, position, step) VALUES (%s, %s, %s)",
                    [(job_id, position, step) for position, step in enumerate(steps)],
                )
            return await _load(connection, job_id)

    async def unfinished(self) -> list[ErasureJob]:
        """Every job not finished yet (cut short by a crash or a failing store), oldest first."""
        async with self._db.connection() as connection:
            cursor = await connection.execute(
                "SELECT job_id FROM erasure_jobs WHERE finish_time IS NULL ORDER BY create_time"
            )
            return [await _load(connection, str(row[0])) for row in await cursor.fetchall()]

    async def finish_step(
        self, job_id: str, position: int, removed: Mapping[str, int]
    ) -> ErasureJob:
        """Records that the step at `position` ran with these counts; the first record of a
        step wins (a step run twice keeps its first counts)."""
        now = self._db.clock()
        async with self._db.transaction() as connection:
            await connection.execute(
                "UPDATE erasure_steps SET removed = %s, finish_time = %s"
                " WHERE job_id = %s AND position = %s AND finish_time IS NULL",
                (json.dumps(dict(removed), sort_keys=True), now, job_id, position),
            )
            return await _load(connection, job_id)

    async def finish(self, job_id: str) -> ErasureJob:
        """Marks the job finished and appends its one audit record, in one transaction (a
        job finished before is returned as it is, audited once)."""
        now = self._db.clock()
        async with self._db.transaction() as connection:
            cursor = await connection.execute(
                "SELECT finish_time FROM erasure_jobs WHERE job_id = %s FOR UPDATE", (job_id,)
            )
            row = found(await cursor.fetchone(), "erasure job")
            if row[0] is None:
                await connection.execute(
                    "UPDATE erasure_jobs SET finish_time = %s WHERE job_id = %s", (now, job_id)
                )
                job = await _load(connection, job_id)
                await key_records.append(connection, [job.audit_event()], now)
            return await _load(connection, job_id)

    async def erase_user_rows(self, tenant_id: str, user_id: str) -> dict[str, int]:
        """Deletes every row of the user (ERASED_TABLES) and takes the user's id off the
        tombstones of their deleted conversations, in one transaction; the rows removed per
        table. A second call removes nothing."""
        owner = {"t": tenant_id, "u": user_id, "now": self._db.clock()}
        removed: dict[str, int] = {}
        async with self._db.transaction() as connection:
            # The locks batch writers take: a batch in flight for one of these conversations
            # either lands before and is erased, or finds the tombstone after.
            conversations = await _user_conversations(connection, tenant_id, user_id)
            if conversations:
                await connection.execute(LOCK_CONVERSATIONS, conversation_locks(conversations))
            cursor = await connection.execute(
                "UPDATE deleted_conversations SET user_id = ''"
                " WHERE tenant_id = %(t)s AND user_id = %(u)s",
                owner,
            )
            removed[ANONYMISED_TOMBSTONES] = cursor.rowcount
            # Tombstones (without the user) first: a late log record never brings a
            # conversation back.
            await connection.execute(
                "INSERT INTO deleted_conversations (conversation_id, tenant_id, user_id,"
                f" delete_time) SELECT conversation_id, tenant_id, '', %(now)s FROM conversations"
                f" WHERE {_OWNER} ON CONFLICT DO NOTHING",
                owner,
            )
            for table, where in _ERASE:
                cursor = await connection.execute(f"DELETE FROM {table} WHERE {where}", owner)
                removed[table] = cursor.rowcount
        return removed


class Retention:
    """Tenants' retention periods and the conversations the sweep expires."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def set(self, tenant_id: str, days: int) -> RetentionPolicy:
        """Sets the tenant's retention period; 0 removes it (keep forever)."""
        require_retention_days(days)
        async with self._db.transaction() as connection:
            if days == 0:
                await connection.execute(
                    "DELETE FROM retention_policies WHERE tenant_id = %s", (tenant_id,)
                )
            else:
                await connection.execute(
                    "INSERT INTO retention_policies (tenant_id, days, update_time)"
                    " VALUES (%s, %s, %s) ON CONFLICT (tenant_id) DO UPDATE SET"
                    " days = excluded.days, update_time = excluded.update_time",
                    (tenant_id, days, self._db.clock()),
                )
        return await self.get(tenant_id)

    async def get(self, tenant_id: str) -> RetentionPolicy:
        """The tenant's retention period (0 days when none is set)."""
        row = await self._db.fetchone(
            "SELECT days, update_time FROM retention_policies WHERE tenant_id = %s",
            (tenant_id,),
        )
        if row is None:
            return RetentionPolicy(tenant_id, 0)
        return RetentionPolicy(tenant_id, int(row[0]), row[1].astimezone(UTC))

    async def policies(self) -> list[RetentionPolicy]:
        """Every tenant's retention period that is set."""
        rows = await self._db.fetchall(
            "SELECT tenant_id, days, update_time FROM retention_policies ORDER BY tenant_id"
        )
        return [RetentionPolicy(str(t), int(d), u.astimezone(UTC)) for t, d, u in rows]

    async def expire(
        self, tenant_id: str, before: datetime, limit: int
    ) -> list[ExpiredConversation]:
        """Deletes up to `limit` of the tenant's conversations whose last activity
        (update time) is before `before`, with everything that goes with them (as
        delete_conversation does, tombstone included), and notes them as pending (their
        memory and log records are still to go); the ones deleted."""
        require_limit(limit)
        now = self._db.clock()
        async with self._db.transaction() as connection:
            cursor = await connection.execute(
                "SELECT conversation_id FROM conversations WHERE tenant_id = %s"
                " AND update_time < %s ORDER BY update_time LIMIT %s",
                (tenant_id, before, limit),
            )
            candidates = [str(row[0]) for row in await cursor.fetchall()]
            if not candidates:
                return []
            await connection.execute(LOCK_CONVERSATIONS, conversation_locks(candidates))
            # Those still without activity since `before` now that their locks are held.
            cursor = await connection.execute(
                "WITH deleted AS (DELETE FROM conversations"
                "  WHERE conversation_id = ANY(%s) AND tenant_id = %s AND update_time < %s"
                "  RETURNING conversation_id, tenant_id, user_id)"
                " INSERT INTO deleted_conversations"
                " (conversation_id, tenant_id, user_id, delete_time)"
                " SELECT conversation_id, tenant_id, user_id, %s FROM deleted"
                " ON CONFLICT DO NOTHING RETURNING conversation_id, user_id",
                (candidates, tenant_id, before, now),
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

    async def pending(self, limit: int) -> list[ExpiredConversation]:
        """Up to `limit` expired conversations whose memory and log records are still to be
        removed (a sweep cut short), oldest first."""
        require_limit(limit)
        rows = await self._db.fetchall(
            "SELECT tenant_id, user_id, conversation_id FROM retention_pending"
            " ORDER BY conversation_id LIMIT %s",
            (limit,),
        )
        return [ExpiredConversation(str(t), str(u), str(c)) for t, u, c in rows]

    async def finish_pending(self, conversation_ids: Sequence[str]) -> None:
        """Forgets that these expired conversations are pending (their memory and log
        records are gone)."""
        if conversation_ids:
            await self._db.execute(
                "DELETE FROM retention_pending WHERE conversation_id = ANY(%s)",
                (list(conversation_ids),),
            )

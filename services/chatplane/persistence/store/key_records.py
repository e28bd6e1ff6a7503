"""API key management (creation, lookup, listing, rotation, revocation: `store.api_keys`) and
the audit chain (`store.audit`) in the system of record: the records, and who asks for a change
that is audited in the same transaction. Every audit append (alone, or inside a
key change's transaction) first locks the chain's one head row (SELECT ... FOR UPDATE), so any
number of replicas append to one chain, one transaction after another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from chatplane.audit.chain import AuditEvent, AuditHead, AuditRecord, extend, head_after
from chatplane.common import errors
from chatplane.common.timestamps import from_micros, to_micros
from chatplane.persistence.store.base import (
    ApiKey,
    IssuedApiKey,
    Owner,
    issue_api_key,
    require_known_id,
    require_limit,
    roles_column,
    roles_from_column,
)
from chatplane.persistence.store.database import Connection, Database, found
from chatplane.persistence.store.records import utc

MAX_ROTATION_OVERLAP: Final = timedelta(hours=24)
"""The longest an old key may keep working after a rotation."""

# The actions of key changes in the audit log (chatplane.audit names the same strings).
API_KEY_CREATE: Final = "api_key.create"
API_KEY_ROTATE: Final = "api_key.rotate"
API_KEY_REVOKE: Final = "api_key.revoke"


@dataclass(frozen=True, slots=True)
class AuditActor:
    """Who asks for an audited change, and from where."""

    actor: str = ""
    source: str = ""
    request_id: str = ""

    def event(self, *, tenant_id: str, action: str, object: str, detail: str = "") -> AuditEvent:
        """The audit event of a successful change this actor asked for."""
        return AuditEvent(
            actor=self.actor or "unattributed",
            tenant_id=tenant_id,
            action=action,
            object=object,
            outcome="success",
            detail=detail,
            source=self.source,
            request_id=self.request_id,
        )


@dataclass(frozen=True, slots=True)
class ApiKeyCursor:
    """Where a page of a tenant's keys (newest first) ended."""

    create_time: datetime
    key_id: str


@dataclass(frozen=True, slots=True)
class ApiKeyPage:
    """A page of keys; `next_cursor` is None on the last page."""

    keys: tuple[ApiKey, ...]
    next_cursor: ApiKeyCursor | None


@dataclass(frozen=True, slots=True)
class RotatedApiKey:
    """A rotation's result: the new key (full key shown once) and the old key's record."""

    issued: IssuedApiKey
    previous: ApiKey


def is_active(key: ApiKey, now: datetime) -> bool:
    """Whether `key` still authenticates at `now`."""
    return not key.revoked and (key.expire_time is None or key.expire_time > now)


def object_of(key_id: str) -> str:
    """The audit object name of a key."""
    return f"api_key/{key_id}"


API_KEY_COLUMNS = (
    "key_id, tenant_id, user_id, label, secret_sha256, revoked, create_time, roles,"
    " expire_time, replaced_by"
)


def api_key_from_row(row: Sequence[Any]) -> ApiKey:
    """The key of a row of API_KEY_COLUMNS."""
    key_id, tenant_id, user_id, label, digest, revoked, create_time, roles, expire, by = row
    return ApiKey(
        key_id,
        Owner(tenant_id, user_id),
        label,
        bytes(digest),
        revoked,
        utc(create_time),
        roles_from_column(roles),
        None if expire is None else utc(expire),
        by,
    )


async def _get_key(connection: Connection, key_id: str, *, lock: bool = False) -> ApiKey:
    """The key `key_id` (locked for update with `lock`), or NotFound."""
    cursor = await connection.execute(
        f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_id = %s"
        + (" FOR UPDATE" if lock else ""),
        (key_id,),
    )
    row = found(await cursor.fetchone(), "api key")
    return api_key_from_row(row)


async def _tenant_key(connection: Connection, tenant_id: str, key_id: str) -> ApiKey:
    require_known_id(key_id, "api key")
    key = await _get_key(connection, key_id, lock=True)
    if key.owner.tenant_id != tenant_id:
        raise errors.NotFound("api key not found")
    return key


async def _insert_key(connection: Connection, record: ApiKey) -> None:
    await connection.execute(
        f"INSERT INTO api_keys ({API_KEY_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            record.key_id,
            record.owner.tenant_id,
            record.owner.user_id,
            record.label,
            record.secret_sha256,
            record.revoked,
            record.create_time,
            roles_column(record.roles),
            record.expire_time,
            record.replaced_by,
        ),
    )


class ApiKeys:
    """The `api_keys` table; every change is audited in its own transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        owner: Owner,
        label: str,
        roles: frozenset[str] = frozenset({"chat"}),
        actor: AuditActor | None = None,
    ) -> IssuedApiKey:
        """Create a key for the owner with these roles; only its secret's hash is stored. The
        creation is appended to the audit log (by `actor`) in the same transaction."""
        now = self._db.clock()
        issued = issue_api_key(owner, label, now, roles)
        record = issued.record
        event = (actor or AuditActor()).event(
            tenant_id=owner.tenant_id,
            action=API_KEY_CREATE,
            object=object_of(record.key_id),
            detail=f"user {owner.user_id}; roles {roles_column(record.roles)}",
        )
        async with self._db.transaction() as connection:
            await _insert_key(connection, record)
            await append(connection, [event], now)
        return issued

    async def get(self, key_id: str) -> ApiKey:
        """The stored record of a key, by its public id (the one lookup not scoped to an
        owner: it is how a caller's owner is found)."""
        require_known_id(key_id, "api key")
        async with self._db.connection() as connection:
            return await _get_key(connection, key_id)

    async def page(
        self,
        tenant_id: str,
        user_id: str = "",
        *,
        limit: int,
        after: ApiKeyCursor | None = None,
        include_revoked: bool = False,
    ) -> ApiKeyPage:
        """Up to `limit` keys of the tenant (of one user when `user_id`), newest first, after
        `after`; without `include_revoked` only keys that still authenticate."""
        require_limit(limit)
        query = f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant_id = %s"
        parameters: list[Any] = [tenant_id]
        if user_id:
            query += " AND user_id = %s"
            parameters.append(user_id)
        if not include_revoked:
            query += " AND NOT revoked AND (expire_time IS NULL OR expire_time > %s)"
            parameters.append(self._db.clock())
        if after is not None:
            query += " AND (create_time, key_id) < (%s, %s)"
            parameters += [after.create_time, after.key_id]
        query += " ORDER BY create_time DESC, key_id DESC LIMIT %s"
        rows = await self._db.fetchall(query, [*parameters, limit + 1])
        keys = tuple(api_key_from_row(row) for row in rows[:limit])
        last = keys[-1] if len(rows) > limit else None
        return ApiKeyPage(
            keys, None if last is None else ApiKeyCursor(last.create_time, last.key_id)
        )

    async def rotate(
        self, tenant_id: str, key_id: str, overlap: timedelta, actor: AuditActor
    ) -> RotatedApiKey:
        """Replace the tenant's key by a new one (same owner, label, roles); the old one stops
        working after `overlap` (zero: now, and it is revoked), never later than it would have
        anyway. NotFound for a key of another tenant; FailedPrecondition for a key that no
        longer works or was rotated already. Audited in the same transaction."""
        now = self._db.clock()
        async with self._db.transaction() as connection:
            old = await _tenant_key(connection, tenant_id, key_id)
            if old.replaced_by:
                raise errors.FailedPrecondition(
                    f"the key was rotated already (replaced by {old.replaced_by}); rotate that one"
                )
            if not is_active(old, now):
                raise errors.FailedPrecondition("the key is revoked; create a new one instead")
            issued = issue_api_key(old.owner, old.label, now, old.roles)
            await _insert_key(connection, issued.record)
            end = now + overlap
            expire = end if old.expire_time is None else min(old.expire_time, end)
            await connection.execute(
                "UPDATE api_keys SET expire_time = %s, replaced_by = %s, revoked = %s"
                " WHERE key_id = %s",
                (expire, issued.record.key_id, overlap <= timedelta(0) or old.revoked, key_id),
            )
            overlap_ms = overlap // timedelta(milliseconds=1)
            event = actor.event(
                tenant_id=tenant_id,
                action=API_KEY_ROTATE,
                object=object_of(key_id),
                detail=f"replaced by {issued.record.key_id}; overlap {overlap_ms} ms",
            )
            await append(connection, [event], now)
            return RotatedApiKey(issued, await _get_key(connection, key_id))

    async def revoke(self, tenant_id: str, key_id: str, actor: AuditActor) -> ApiKey:
        """Revoke the tenant's key now (again: no change); NotFound for another tenant's key.
        Audited in the same transaction."""
        now = self._db.clock()
        async with self._db.transaction() as connection:
            old = await _tenant_key(connection, tenant_id, key_id)
            was_active = is_active(old, now)
            await connection.execute(
                "UPDATE api_keys SET revoked = true, expire_time = %s WHERE key_id = %s",
                (now if was_active else old.expire_time, key_id),
            )
            event = actor.event(
                tenant_id=tenant_id,
                action=API_KEY_REVOKE,
                object=object_of(key_id),
                detail="" if was_active else "was revoked already",
            )
            await append(connection, [event], now)
            return await _get_key(connection, key_id)


# The audit_log table's columns: times as whole microseconds since the Unix epoch, exactly what
# the chain hashes.
AUDIT_COLUMNS = (
    "seq, event_time_us, actor, tenant_id, action, object, outcome, detail, source,"
    " request_id, prev_hash, hash"
)


def audit_row(record: AuditRecord) -> tuple[Any, ...]:
    """The values of a record for the audit_log columns, in order (times in microseconds)."""
    event = record.event
    assert event.event_time is not None  # extend() sets it
    # The event's fields before its time are the text columns, in their order.
    *texts, _ = dataclasses.astuple(event)
    return (record.seq, to_micros(event.event_time), *texts, record.prev_hash, record.hash)


def audit_record_from_row(row: Sequence[Any]) -> AuditRecord:
    """The record of a row of the audit_log columns (times stored as microseconds)."""
    seq, time_us, actor, tenant, action, obj, outcome, detail, source, request_id, prev, digest = (
        row
    )
    event = AuditEvent(
        actor, tenant, action, obj, outcome, detail, source, request_id, from_micros(time_us)
    )
    return AuditRecord(int(seq), event, bytes(prev), bytes(digest))


async def append(connection: Connection, events: Sequence[AuditEvent], now: datetime) -> AuditHead:
    """Appends inside the caller's transaction: locks the head row first, so concurrent
    appends (any replica) wait for this transaction and then chain after it."""
    cursor = await connection.execute("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
    row = await cursor.fetchone()
    if row is None:
        raise errors.FailedPrecondition("the audit log has no head row")
    head = AuditHead(int(row[0]), bytes(row[1]))
    records = extend(head, events, now)
    if not records:
        return head
    async with connection.cursor() as insert:
        await insert.executemany(
            f"INSERT INTO audit_log ({AUDIT_COLUMNS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [audit_row(record) for record in records],
        )
    new_head = head_after(head, records)
    await connection.execute(
        "UPDATE audit_head SET seq = %s, hash = %s WHERE id = 1", (new_head.seq, new_head.hash)
    )
    return new_head


class AuditChain:
    """The audit log's hash chain (`audit_log` and its one `audit_head` row)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(self, events: Sequence[AuditEvent]) -> AuditHead:
        """Append the events to the chain in order, in one transaction, serialised with
        every other append to the same database; returns the new head."""
        async with self._db.transaction() as connection:
            return await append(connection, events, self._db.clock())

    async def records(self, after_seq: int, limit: int) -> list[AuditRecord]:
        """Up to `limit` records of the chain with seq > `after_seq`, in seq order."""
        require_limit(limit)
        rows = await self._db.fetchall(
            f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > %s ORDER BY seq LIMIT %s",
            (after_seq, limit),
        )
        return [audit_record_from_row(row) for row in rows]

    async def head(self) -> AuditHead:
        """The chain's stored head."""
        row = await self._db.fetchone("SELECT seq, hash FROM audit_head WHERE id = 1")
        if row is None:
            raise errors.FailedPrecondition("the audit log has no head row")
        return AuditHead(int(row[0]), bytes(row[1]))

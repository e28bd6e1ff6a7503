"""Key management and the audit chain on PostgreSQL: the statements behind
PostgresConversationStore's key and audit methods. Every audit append (alone, or inside a key
change's transaction) first locks the chain's one head row (SELECT ... FOR UPDATE), so any
number of replicas append to one chain, one transaction after another."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from chatplane.audit.chain import AuditEvent, AuditHead, AuditRecord, extend, head_after
from chatplane.common import errors
from chatplane.persistence.store import key_records
from chatplane.persistence.store.audit_rows import (
    AUDIT_COLUMNS,
    audit_record_from_row,
    audit_row,
)
from chatplane.persistence.store.base import (
    ApiKey,
    IssuedApiKey,
    Owner,
    issue_api_key,
    roles_column,
    roles_from_column,
)
from chatplane.persistence.store.key_records import (
    ApiKeyCursor,
    ApiKeyPage,
    AuditActor,
    RotatedApiKey,
)

Connection = psycopg.AsyncConnection[tuple[Any, ...]]

API_KEY_COLUMNS = (
    "key_id, tenant_id, user_id, label, secret_sha256, revoked, create_time, roles,"
    " expire_time, replaced_by"
)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def api_key_from_row(row: Sequence[Any]) -> ApiKey:
    """The key of a row of API_KEY_COLUMNS."""
    key_id, tenant_id, user_id, label, digest, revoked, create_time, roles, expire, by = row
    return ApiKey(
        key_id,
        Owner(tenant_id, user_id),
        label,
        bytes(digest),
        revoked,
        _utc(create_time),
        roles_from_column(roles),
        None if expire is None else _utc(expire),
        by,
    )


async def get_api_key(connection: Connection, key_id: str, *, lock: bool = False) -> ApiKey:
    """The key `key_id` (locked for update with `lock`), or NotFound."""
    cursor = await connection.execute(
        f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_id = %s"
        + (" FOR UPDATE" if lock else ""),
        (key_id,),
    )
    row = await cursor.fetchone()
    if row is None:
        raise errors.NotFound("api key not found")
    return api_key_from_row(row)


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


async def create_api_key(
    connection: Connection, issued: IssuedApiKey, actor: AuditActor, now: datetime
) -> None:
    """Stores a new key and audits its creation, in one transaction."""
    record = issued.record
    async with connection.transaction():
        await _insert_key(connection, record)
        await append(
            connection,
            [
                actor.event(
                    tenant_id=record.owner.tenant_id,
                    action=key_records.API_KEY_CREATE,
                    object=key_records.object_of(record.key_id),
                    detail=f"user {record.owner.user_id}; roles {roles_column(record.roles)}",
                )
            ],
            now,
        )


async def list_api_keys(
    connection: Connection,
    tenant_id: str,
    user_id: str,
    limit: int,
    after: ApiKeyCursor | None,
    include_revoked: bool,
    now: datetime,
) -> ApiKeyPage:
    """A page of the tenant's keys, newest first."""
    query = f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant_id = %s"
    parameters: list[Any] = [tenant_id]
    if user_id:
        query += " AND user_id = %s"
        parameters.append(user_id)
    if not include_revoked:
        query += " AND NOT revoked AND (expire_time IS NULL OR expire_time > %s)"
        parameters.append(now)
    if after is not None:
        query += " AND (create_time, key_id) < (%s, %s)"
        parameters += [after.create_time, after.key_id]
    query += " ORDER BY create_time DESC, key_id DESC LIMIT %s"
    cursor = await connection.execute(query, [*parameters, limit + 1])
    rows = await cursor.fetchall()
    keys = tuple(api_key_from_row(row) for row in rows[:limit])
    next_cursor = ApiKeyCursor(keys[-1].create_time, keys[-1].key_id) if len(rows) > limit else None
    return ApiKeyPage(keys, next_cursor)


async def _tenant_key(connection: Connection, tenant_id: str, key_id: str) -> ApiKey:
    key = await get_api_key(connection, key_id, lock=True)
    if key.owner.tenant_id != tenant_id:
        raise errors.NotFound("api key not found")
    return key


async def rotate_api_key(
    connection: Connection,
    tenant_id: str,
    key_id: str,
    overlap: timedelta,
    actor: AuditActor,
    now: datetime,
) -> RotatedApiKey:
    """Replaces the key (see ConversationStore.rotate_api_key)."""
    async with connection.transaction():
        old = await _tenant_key(connection, tenant_id, key_id)
        key_records.check_rotatable(old, now)
        issued = issue_api_key(old.owner, old.label, now, old.roles)
        await _insert_key(connection, issued.record)
        expire = key_records.rotated_expiry(old, now, overlap)
        revoked = overlap <= timedelta(0) or old.revoked
        await connection.execute(
            "UPDATE api_keys SET expire_time = %s, replaced_by = %s, revoked = %s"
            " WHERE key_id = %s",
            (expire, issued.record.key_id, revoked, key_id),
        )
        await append(connection, [key_records.rotation_event(actor, old, issued, overlap)], now)
        previous = await get_api_key(connection, key_id)
    return RotatedApiKey(issued, previous)


async def revoke_api_key(
    connection: Connection, tenant_id: str, key_id: str, actor: AuditActor, now: datetime
) -> ApiKey:
    """Revokes the key now (see ConversationStore.revoke_api_key)."""
    async with connection.transaction():
        old = await _tenant_key(connection, tenant_id, key_id)
        was_active = key_records.is_active(old, now)
        await connection.execute(
            "UPDATE api_keys SET revoked = true, expire_time = %s WHERE key_id = %s",
            (now if was_active else old.expire_time, key_id),
        )
        await append(
            connection,
            [
                actor.event(
                    tenant_id=tenant_id,
                    action=key_records.API_KEY_REVOKE,
                    object=key_records.object_of(key_id),
                    detail="" if was_active else "was revoked already",
                )
            ],
            now,
        )
        return await get_api_key(connection, key_id)


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


async def append_audit(
    connection: Connection, events: Sequence[AuditEvent], now: datetime
) -> AuditHead:
    """Appends the events in a transaction of their own; the new head."""
    async with connection.transaction():
        return await append(connection, events, now)


async def audit_head(connection: Connection) -> AuditHead:
    """The stored head."""
    cursor = await connection.execute("SELECT seq, hash FROM audit_head WHERE id = 1")
    row = await cursor.fetchone()
    if row is None:
        raise errors.FailedPrecondition("the audit log has no head row")
    return AuditHead(int(row[0]), bytes(row[1]))


async def audit_records(connection: Connection, after_seq: int, limit: int) -> list[AuditRecord]:
    """Records with seq > after_seq, in order."""
    cursor = await connection.execute(
        f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > %s ORDER BY seq LIMIT %s",
        (after_seq, limit),
    )
    return [audit_record_from_row(row) for row in await cursor.fetchall()]

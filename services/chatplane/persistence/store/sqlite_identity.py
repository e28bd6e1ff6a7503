"""Key management and the audit chain on SQLite: the statements behind
SqliteConversationStore's key and audit methods, each run on the store's one connection
inside its own write transaction (SQLite's single writer serialises audit appends)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

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
    from_micros,
    issue_api_key,
    roles_column,
    roles_from_column,
    to_micros,
)
from chatplane.persistence.store.key_records import (
    ApiKeyCursor,
    ApiKeyPage,
    AuditActor,
    RotatedApiKey,
)
from chatplane.persistence.store.sqlite_transactions import write_transaction

API_KEY_COLUMNS = (
    "key_id, tenant_id, user_id, label, secret_sha256, revoked, create_time_us, roles,"
    " expire_time_us, replaced_by"
)


def api_key_from_row(row: Sequence[Any]) -> ApiKey:
    """The key of a row of API_KEY_COLUMNS."""
    key_id, tenant_id, user_id, label, digest, revoked, create_us, roles, expire_us, by = row
    return ApiKey(
        key_id,
        Owner(tenant_id, user_id),
        label,
        bytes(digest),
        bool(revoked),
        from_micros(create_us),
        roles_from_column(roles),
        None if expire_us is None else from_micros(expire_us),
        by,
    )


def get_api_key(key_id: str, connection: sqlite3.Connection) -> ApiKey:
    """The key `key_id`, or NotFound."""
    row = connection.execute(
        f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)
    ).fetchone()
    if row is None:
        raise errors.NotFound("api key not found")
    return api_key_from_row(row)


def _insert_key(record: ApiKey, connection: sqlite3.Connection) -> None:
    connection.execute(
        f"INSERT INTO api_keys ({API_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.key_id,
            record.owner.tenant_id,
            record.owner.user_id,
            record.label,
            record.secret_sha256,
            int(record.revoked),
            to_micros(record.create_time),
            roles_column(record.roles),
            None if record.expire_time is None else to_micros(record.expire_time),
            record.replaced_by,
        ),
    )


def create_api_key(
    issued: IssuedApiKey, actor: AuditActor, now: datetime, connection: sqlite3.Connection
) -> None:
    """Stores a new key and audits its creation, in one transaction."""
    record = issued.record
    with write_transaction(connection):
        _insert_key(record, connection)
        _append(
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


def list_api_keys(
    tenant_id: str,
    user_id: str,
    limit: int,
    after: ApiKeyCursor | None,
    include_revoked: bool,
    now: datetime,
    connection: sqlite3.Connection,
) -> ApiKeyPage:
    """A page of the tenant's keys, newest first."""
    query = f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant_id = ?"
    parameters: list[Any] = [tenant_id]
    if user_id:
        query += " AND user_id = ?"
        parameters.append(user_id)
    if not include_revoked:
        query += " AND revoked = 0 AND (expire_time_us IS NULL OR expire_time_us > ?)"
        parameters.append(to_micros(now))
    if after is not None:
        query += " AND (create_time_us, key_id) < (?, ?)"
        parameters += [to_micros(after.create_time), after.key_id]
    query += " ORDER BY create_time_us DESC, key_id DESC LIMIT ?"
    rows = connection.execute(query, [*parameters, limit + 1]).fetchall()
    keys = tuple(api_key_from_row(row) for row in rows[:limit])
    cursor = ApiKeyCursor(keys[-1].create_time, keys[-1].key_id) if len(rows) > limit else None
    return ApiKeyPage(keys, cursor)


def _tenant_key(tenant_id: str, key_id: str, connection: sqlite3.Connection) -> ApiKey:
    key = get_api_key(key_id, connection)
    if key.owner.tenant_id != tenant_id:
        raise errors.NotFound("api key not found")
    return key


def rotate_api_key(
    tenant_id: str,
    key_id: str,
    overlap: timedelta,
    actor: AuditActor,
    now: datetime,
    connection: sqlite3.Connection,
) -> RotatedApiKey:
    """Replaces the key (see ConversationStore.rotate_api_key)."""
    with write_transaction(connection):
        old = _tenant_key(tenant_id, key_id, connection)
        key_records.check_rotatable(old, now)
        issued = issue_api_key(old.owner, old.label, now, old.roles)
        _insert_key(issued.record, connection)
        expire = key_records.rotated_expiry(old, now, overlap)
        revoked = overlap <= timedelta(0)
        connection.execute(
            "UPDATE api_keys SET expire_time_us = ?, replaced_by = ?, revoked = ? WHERE key_id = ?",
            (to_micros(expire), issued.record.key_id, int(revoked or old.revoked), key_id),
        )
        _append(connection, [key_records.rotation_event(actor, old, issued, overlap)], now)
        previous = get_api_key(key_id, connection)
    return RotatedApiKey(issued, previous)


def revoke_api_key(
    tenant_id: str, key_id: str, actor: AuditActor, now: datetime, connection: sqlite3.Connection
) -> ApiKey:
    """Revokes the key now (see ConversationStore.revoke_api_key)."""
    with write_transaction(connection):
        old = _tenant_key(tenant_id, key_id, connection)
        was_active = key_records.is_active(old, now)
        if was_active:
            connection.execute(
                "UPDATE api_keys SET revoked = 1, expire_time_us = ? WHERE key_id = ?",
                (to_micros(now), key_id),
            )
        else:
            connection.execute("UPDATE api_keys SET revoked = 1 WHERE key_id = ?", (key_id,))
        _append(
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
        return get_api_key(key_id, connection)


def append_audit(
    events: Sequence[AuditEvent], now: datetime, connection: sqlite3.Connection
) -> AuditHead:
    """Appends the events in one write transaction; the new head."""
    with write_transaction(connection):
        return _append(connection, events, now)


def _append(
    connection: sqlite3.Connection, events: Sequence[AuditEvent], now: datetime
) -> AuditHead:
    """Appends inside the caller's write transaction (which holds SQLite's write lock, so no
    other append can read the same head)."""
    head = _head(connection)
    records = extend(head, events, now)
    connection.executemany(
        f"INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [audit_row(record) for record in records],
    )
    new_head = head_after(head, records)
    connection.execute(
        "UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (new_head.seq, new_head.hash)
    )
    return new_head


def _head(connection: sqlite3.Connection) -> AuditHead:
    row = connection.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    if row is None:
        raise errors.FailedPrecondition("the audit log has no head row")
    return AuditHead(int(row[0]), bytes(row[1]))


def audit_head(connection: sqlite3.Connection) -> AuditHead:
    """The stored head."""
    return _head(connection)


def audit_records(after_seq: int, limit: int, connection: sqlite3.Connection) -> list[AuditRecord]:
    """Records with seq > after_seq, in order."""
    rows = connection.execute(
        f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?",
        (after_seq, limit),
    ).fetchall()
    return [audit_record_from_row(row) for row in rows]

"""The `user_data_keys` table (crypto-shredding: crypto/keyring.py)."""

from __future__ import annotations

from typing import Any

import psycopg

from chatplane.common import errors
from chatplane.crypto.keyring import WrappedDataKey

Connection = psycopg.AsyncConnection[tuple[Any, ...]]

_COLUMNS = "tenant_id, user_id, key_id, kek_id, wrapped_key"


async def get_data_key(
    connection: Connection, tenant_id: str, user_id: str
) -> WrappedDataKey | None:
    """The user's wrapped data key, if any."""
    cursor = await connection.execute(
        f"SELECT {_COLUMNS} FROM user_data_keys WHERE tenant_id = %s AND user_id = %s",
        (tenant_id, user_id),
    )
    row = await cursor.fetchone()
    return None if row is None else WrappedDataKey(row[0], row[1], row[2], row[3], bytes(row[4]))


async def add_data_key(connection: Connection, key: WrappedDataKey) -> WrappedDataKey:
    """Store `key` unless the user has one; the stored one (a concurrent creator may win).
    The INSERT's RETURNING, else the row that made it conflict: when that row was committed
    by a concurrent creator after this statement's snapshot, the statement sees neither, and
    a second statement (autocommit: a new snapshot) reads it."""
    cursor = await connection.execute(
        f"WITH added AS (INSERT INTO user_data_keys ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s)"
        f" ON CONFLICT (tenant_id, user_id) DO NOTHING RETURNING {_COLUMNS})"
        f" SELECT {_COLUMNS} FROM added UNION ALL"
        f" SELECT {_COLUMNS} FROM user_data_keys WHERE tenant_id = %s AND user_id = %s LIMIT 1",
        (
            key.tenant_id,
            key.user_id,
            key.key_id,
            key.kek_id,
            key.wrapped_key,
            key.tenant_id,
            key.user_id,
        ),
    )
    row = await cursor.fetchone()
    if row is not None:
        return WrappedDataKey(row[0], row[1], row[2], row[3], bytes(row[4]))
    stored = await get_data_key(connection, key.tenant_id, key.user_id)
    if stored is None:  # destroyed again meanwhile
        raise errors.Unavailable("the user's data key changed while it was created; try again")
    return stored


async def rewrap_data_key(connection: Connection, key: WrappedDataKey) -> None:
    """New wrapping of the user's key `key.key_id` (a destroyed or replaced key stays so)."""
    await connection.execute(
        "UPDATE user_data_keys SET kek_id = %s, wrapped_key = %s"
        " WHERE tenant_id = %s AND user_id = %s AND key_id = %s",
        (key.kek_id, key.wrapped_key, key.tenant_id, key.user_id, key.key_id),
    )


async def delete_data_key(connection: Connection, tenant_id: str, user_id: str) -> bool:
    """Delete the user's wrapped key; whether there was one."""
    cursor = await connection.execute(
        "DELETE FROM user_data_keys WHERE tenant_id = %s AND user_id = %s", (tenant_id, user_id)
    )
    return cursor.rowcount > 0

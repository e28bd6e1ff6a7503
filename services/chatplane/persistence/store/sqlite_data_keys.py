"""The `user_data_keys` table on the SQLite store (crypto-shredding; chatplane.crypto.keyring)."""

from __future__ import annotations

import sqlite3
import time

from chatplane.crypto.keyring import WrappedDataKey
from chatplane.persistence.store.sqlite_transactions import write_transaction

_COLUMNS = "tenant_id, user_id, key_id, kek_id, wrapped_key"


def get_data_key(
    tenant_id: str, user_id: str, connection: sqlite3.Connection
) -> WrappedDataKey | None:
    """The user's wrapped data key, if any."""
    row = connection.execute(
        f"SELECT {_COLUMNS} FROM user_data_keys WHERE tenant_id = ? AND user_id = ?",
        (tenant_id, user_id),
    ).fetchone()
    return None if row is None else WrappedDataKey(row[0], row[1], row[2], row[3], bytes(row[4]))


def add_data_key(key: WrappedDataKey, connection: sqlite3.Connection) -> WrappedDataKey:
    """Store `key` unless the user has one; the stored one."""
    with write_transaction(connection):
        connection.execute(
            f"INSERT INTO user_data_keys ({_COLUMNS}, create_time_us) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (tenant_id, user_id) DO NOTHING",
            (
                key.tenant_id,
                key.user_id,
                key.key_id,
                key.kek_id,
                key.wrapped_key,
                time.time_ns() // 1000,
            ),
        )
        stored = get_data_key(key.tenant_id, key.user_id, connection)
    assert stored is not None  # inserted or already there, in this transaction
    return stored


def rewrap_data_key(key: WrappedDataKey, connection: sqlite3.Connection) -> None:
    """New wrapping of the user's key `key.key_id` (a destroyed or replaced key stays so)."""
    with write_transaction(connection):
        connection.execute(
            "UPDATE user_data_keys SET kek_id = ?, wrapped_key = ?"
            " WHERE tenant_id = ? AND user_id = ? AND key_id = ?",
            (key.kek_id, key.wrapped_key, key.tenant_id, key.user_id, key.key_id),
        )


def delete_data_key(tenant_id: str, user_id: str, connection: sqlite3.Connection) -> bool:
    """Delete the user's wrapped key; whether there was one."""
    with write_transaction(connection):
        cursor = connection.execute(
            "DELETE FROM user_data_keys WHERE tenant_id = ? AND user_id = ?",
            (tenant_id, user_id),
        )
    return cursor.rowcount > 0

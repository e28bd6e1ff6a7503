"""The `user_data_keys` table (crypto-shredding: crypto/keyring.py), `store.data_keys`."""

from __future__ import annotations

import dataclasses
from typing import Any

from chatplane.common import errors
from chatplane.crypto.keyring import WrappedDataKey
from chatplane.persistence.store.database import Database

_COLUMNS = "tenant_id, user_id, key_id, kek_id, wrapped_key"


def _key(row: tuple[Any, ...]) -> WrappedDataKey:
    return WrappedDataKey(row[0], row[1], row[2], row[3], bytes(row[4]))


class DataKeys:
    """Wrapped per-user data keys: a chatplane.crypto.keyring.DataKeyStore."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_data_key(self, tenant_id: str, user_id: str) -> WrappedDataKey | None:
        """The user's wrapped data key, if any."""
        row = await self._db.fetchone(
            f"SELECT {_COLUMNS} FROM user_data_keys WHERE tenant_id = %s AND user_id = %s",
            (tenant_id, user_id),
        )
        return None if row is None else _key(row)

    async def add_data_key(self, key: WrappedDataKey) -> WrappedDataKey:
        """Store `key` unless the user has one; the stored one (a concurrent creator may win).
        The INSERT's RETURNING, else the row that made it conflict: when that row was committed
        by a concurrent creator after this statement's snapshot, the statement sees neither,
        and a second statement (autocommit: a new snapshot) reads it."""
        row = await self._db.fetchone(
            f"WITH added AS (INSERT INTO user_data_keys ({_COLUMNS})"
            " VALUES (%(tenant_id)s, %(user_id)s, %(key_id)s, %(kek_id)s, %(wrapped_key)s)"
            f" ON CONFLICT (tenant_id, user_id) DO NOTHING RETURNING {_COLUMNS})"
            f" SELECT {_COLUMNS} FROM added UNION ALL SELECT {_COLUMNS} FROM user_data_keys"
            " WHERE tenant_id = %(tenant_id)s AND user_id = %(user_id)s LIMIT 1",
            dataclasses.asdict(key),
        )
        if row is not None:
            return _key(row)
        stored = await self.get_data_key(key.tenant_id, key.user_id)
        if stored is None:  # destroyed again meanwhile
            raise errors.Unavailable("the user's data key changed while it was created; try again")
        return stored

    async def rewrap_data_key(self, key: WrappedDataKey) -> None:
        """New wrapping of the user's key `key.key_id` (a destroyed or replaced key stays so)."""
        await self._db.execute(
            "UPDATE user_data_keys SET kek_id = %s, wrapped_key = %s"
            " WHERE tenant_id = %s AND user_id = %s AND key_id = %s",
            (key.kek_id, key.wrapped_key, key.tenant_id, key.user_id, key.key_id),
        )

    async def delete_data_key(self, tenant_id: str, user_id: str) -> bool:
        """Delete the user's wrapped key; whether there was one."""
        deleted = await self._db.execute(
            "DELETE FROM user_data_keys WHERE tenant_id = %s AND user_id = %s",
            (tenant_id, user_id),
        )
        return deleted > 0

"""The store's connection pool, shared by the store and its parts (quotas, handoffs, keys,
audit, erasure, retention, data keys, registry, trees): a pooled connection per call, with
infrastructure failures turned into Unavailable, and the conversations' advisory locks."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

import psycopg
import psycopg.errors
from psycopg.abc import Params
from psycopg_pool import AsyncConnectionPool

from chatplane.common import errors
from chatplane.persistence.store.base import Clock

_log = logging.getLogger(__name__)

Connection = psycopg.AsyncConnection[tuple[Any, ...]]

UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    # Connection refused or lost, server shutting down, pool exhausted or closed, statement or
    # lock timeout, serialization failure, deadlock, disk full: all worth a retry.
    psycopg.OperationalError,
    # A primary that turned into a standby (failover): writes fail until clients reconnect.
    psycopg.errors.ReadOnlySqlTransaction,
)

# Advisory locks use the two-int4 key form, whose first half names what is locked; this keeps
# them apart from any single-bigint advisory lock another program takes in the same database.
LOCK_CLASS_MIGRATION = 0x43500001
LOCK_CLASS_CONVERSATION = 0x43500002
LOCK_CLASS_TENANT_QUOTA = 0x43500003

LOCK_CONVERSATIONS = (
    "SELECT pg_advisory_xact_lock(%b, key) FROM unnest(%b::int4[]) WITH ORDINALITY"
    " AS k (key, ordinal) ORDER BY ordinal"
)
"""Takes the transaction-level locks of conversations; parameters: `conversation_locks`."""


def lock_key(name: str) -> int:
    """An advisory lock key: 32 bits of a hash of `name` (a collision only makes two names
    share a lock)."""
    digest = hashlib.blake2b(name.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def conversation_locks(conversation_ids: Iterable[str]) -> tuple[int, list[int]]:
    """The parameters of LOCK_CONVERSATIONS: the keys in order, so two transactions locking
    overlapping sets cannot deadlock."""
    return LOCK_CLASS_CONVERSATION, sorted({lock_key(c) for c in conversation_ids})


def found(row: tuple[Any, ...] | None, what: str) -> tuple[Any, ...]:
    """The row of a lookup; none is NotFound ("<what> not found")."""
    if row is None:
        raise errors.NotFound(f"{what} not found")
    return row


class Database:
    """A connection pool and the clock of the store that owns it."""

    def __init__(self, pool: AsyncConnectionPool[Connection], clock: Clock) -> None:
        self._pool = pool
        self.clock = clock
        self._closed = False

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection (autocommit; open a transaction where a call needs one), with
        infrastructure failures turned into Unavailable."""
        if self._closed:
            raise errors.Unavailable("the conversation store is closed")
        try:
            async with self._pool.connection() as connection:
                yield connection
        except UNAVAILABLE_ERRORS as error:
            _log.warning("conversation store call failed", extra={"error": repr(error)})
            raise errors.Unavailable("the conversation store is unavailable") from error

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A pooled connection inside one transaction."""
        async with self.connection() as connection, connection.transaction():
            yield connection

    async def fetchone(self, query: str, params: Params | None = None) -> tuple[Any, ...] | None:
        """The first row of one statement, on a pooled connection."""
        async with self.connection() as connection:
            cursor = await connection.execute(query, params)
            return await cursor.fetchone()

    async def fetchall(self, query: str, params: Params | None = None) -> list[tuple[Any, ...]]:
        """The rows of one statement, on a pooled connection."""
        async with self.connection() as connection:
            cursor = await connection.execute(query, params)
            return await cursor.fetchall()

    async def execute(self, query: str, params: Params | None = None) -> int:
        """Runs one statement on a pooled connection; how many rows it changed."""
        async with self.connection() as connection:
            return (await connection.execute(query, params)).rowcount

    async def close(self) -> None:
        """Waits for the connections in use to come back (calls under way finish first)."""
        if not self._closed:
            self._closed = True
            await self._pool.close()

"""The variant registry on the PostgreSQL store (rules in chatplane.persistence.store.
variant_registry): each push or change runs in one transaction holding the registry's
advisory lock, so versions and revisions are numbered without gaps or races."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import psycopg

from chatplane.common import errors
from chatplane.persistence.store.variant_registry import (
    ChangeRecord,
    Deployment,
    Promotion,
    Stage,
    VariantRecord,
    VariantRegistryStore,
    change_values,
    parse_or_invalid,
    plan_promotion,
    plan_rollback,
    require_promotion,
)

Connection = psycopg.AsyncConnection[tuple[Any, ...]]
# pg_advisory_xact_lock key of registry writes ("chatplane registry" in no particular code).
_LOCK_KEY = 0x63_70_72_65_67
_VERSION_COLUMNS = "name, version, spec_json, spec_sha256, created_by, create_time"
_CHANGE_COLUMNS = (
    "revision, change_time, actor, action, stage, from_variant, to_variant,"
    " from_share_percent, to_share_percent, reason, production_after, canary_after,"
    " canary_share_after"
)


def _version(row: tuple[Any, ...]) -> VariantRecord:
    return VariantRecord(row[0], int(row[1]), row[2], row[3], row[4], row[5].astimezone(UTC))


def _change(row: tuple[Any, ...]) -> ChangeRecord:
    return ChangeRecord(
        int(row[0]),
        row[1].astimezone(UTC),
        row[2],
        row[3],
        Stage(row[4]),
        row[5],
        row[6],
        float(row[7]),
        float(row[8]),
        row[9],
        Deployment(int(row[0]), row[10], row[11], float(row[12])),
    )


async def _lock(connection: Connection) -> None:
    await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))


async def _get(connection: Connection, name: str, version: int) -> VariantRecord:
    cursor = await connection.execute(
        f"SELECT {_VERSION_COLUMNS} FROM variant_versions WHERE name = %s AND version = %s",
        (name, version),
    )
    row = await cursor.fetchone()
    if row is None:
        raise errors.NotFound(f"no variant {name}@{version}")
    return _version(row)


async def _changes(connection: Connection, limit: int | None) -> list[ChangeRecord]:
    if limit is None:
        cursor = await connection.execute(
            f"SELECT {_CHANGE_COLUMNS} FROM variant_changes ORDER BY revision"
        )
    else:
        cursor = await connection.execute(
            f"SELECT {_CHANGE_COLUMNS} FROM variant_changes ORDER BY revision DESC LIMIT %s",
            (limit,),
        )
    return [_change(row) for row in await cursor.fetchall()]


async def _insert_change(connection: Connection, change: ChangeRecord) -> None:
    await connection.execute(
        f"INSERT INTO variant_changes ({_CHANGE_COLUMNS})"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        change_values(change, change.change_time),
    )


class PostgresVariantRegistry(VariantRegistryStore):
    """The registry's methods of the PostgreSQL store (mixed into PostgresConversationStore)."""

    _clock: Callable[[], datetime]

    @abc.abstractmethod
    def _connection(self) -> contextlib.AbstractAsyncContextManager[Connection]: ...

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[Connection]:
        async with self._connection() as connection, connection.transaction():
            await _lock(connection)
            yield connection

    async def push_variant(
        self, name: str, spec_json: str, spec_sha256: str, actor: str
    ) -> tuple[VariantRecord, bool]:
        async with self._locked() as connection:
            cursor = await connection.execute(
                f"SELECT {_VERSION_COLUMNS} FROM variant_versions WHERE name = %s"
                " ORDER BY version DESC LIMIT 1",
                (name,),
            )
            row = await cursor.fetchone()
            if row is not None and row[3] == spec_sha256:
                return _version(row), False
            version = 1 if row is None else int(row[1]) + 1
            values = (name, version, spec_json, spec_sha256, actor, self._clock())
            await connection.execute(
                f"INSERT INTO variant_versions ({_VERSION_COLUMNS})"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                values,
            )
            return _version(values), True

    async def list_variants(self, name: str | None = None) -> list[VariantRecord]:
        query = f"SELECT {_VERSION_COLUMNS} FROM variant_versions"
        parameters: tuple[Any, ...] = ()
        if name is not None:
            query += " WHERE name = %s"
            parameters = (name,)
        async with self._connection() as connection:
            cursor = await connection.execute(query + " ORDER BY name, version", parameters)
            return [_version(row) for row in await cursor.fetchall()]

    async def get_variant(self, name: str, version: int) -> VariantRecord:
        async with self._connection() as connection:
            return await _get(connection, name, version)

    async def promote_variant(self, promotion: Promotion) -> ChangeRecord:
        require_promotion(promotion)
        name, version = parse_or_invalid(promotion.variant, "variant")
        async with self._locked() as connection:
            await _get(connection, name, version)
            change = plan_promotion(await _changes(connection, None), promotion, self._clock())
            await _insert_change(connection, change)
            return change

    async def rollback_variant(self, actor: str, reason: str) -> ChangeRecord:
        async with self._locked() as connection:
            change = plan_rollback(await _changes(connection, None), actor, reason, self._clock())
            await _insert_change(connection, change)
            return change

    async def variant_changes(self, limit: int) -> list[ChangeRecord]:
        async with self._connection() as connection:
            return await _changes(connection, limit)

    async def variant_deployment(self) -> Deployment:
        async with self._connection() as connection:
            newest = await _changes(connection, 1)
        return newest[0].after if newest else Deployment()

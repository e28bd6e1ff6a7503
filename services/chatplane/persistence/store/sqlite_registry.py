"""The variant registry on the SQLite store (rules in chatplane.persistence.store.
variant_registry): one write transaction per push or change (BEGIN IMMEDIATE serialises
them across connections and processes)."""

from __future__ import annotations

import abc
import functools
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from chatplane.common import errors
from chatplane.persistence.store.base import from_micros, to_micros
from chatplane.persistence.store.sqlite_transactions import read_transaction, write_transaction
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

_T = TypeVar("_T")
_VERSION_COLUMNS = "name, version, spec_json, spec_sha256, created_by, create_time_us"
_CHANGE_COLUMNS = (
    "revision, change_time_us, actor, action, stage, from_variant, to_variant,"
    " from_share_percent, to_share_percent, reason, production_after, canary_after,"
    " canary_share_after"
)


def _version(row: tuple[Any, ...]) -> VariantRecord:
    return VariantRecord(row[0], int(row[1]), row[2], row[3], row[4], from_micros(row[5]))


def _change(row: tuple[Any, ...]) -> ChangeRecord:
    return ChangeRecord(
        int(row[0]),
        from_micros(row[1]),
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


def _all_changes(connection: sqlite3.Connection) -> list[ChangeRecord]:
    rows = connection.execute(
        f"SELECT {_CHANGE_COLUMNS} FROM variant_changes ORDER BY revision"
    ).fetchall()
    return [_change(row) for row in rows]


def _insert_change(connection: sqlite3.Connection, change: ChangeRecord) -> None:
    connection.execute(
        f"INSERT INTO variant_changes ({_CHANGE_COLUMNS})"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        change_values(change, to_micros(change.change_time)),
    )


def push(
    name: str, spec_json: str, sha: str, actor: str, now_us: int, connection: sqlite3.Connection
) -> tuple[VariantRecord, bool]:
    with write_transaction(connection):
        row = connection.execute(
            f"SELECT {_VERSION_COLUMNS} FROM variant_versions WHERE name = ?"
            " ORDER BY version DESC LIMIT 1",
            (name,),
        ).fetchone()
        if row is not None and row[3] == sha:
            return _version(row), False
        version = 1 if row is None else int(row[1]) + 1
        values = (name, version, spec_json, sha, actor, now_us)
        connection.execute(
            f"INSERT INTO variant_versions ({_VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", values
        )
        return _version(values), True


def list_versions(name: str | None, connection: sqlite3.Connection) -> list[VariantRecord]:
    query = f"SELECT {_VERSION_COLUMNS} FROM variant_versions"
    parameters: tuple[Any, ...] = ()
    if name is not None:
        query += " WHERE name = ?"
        parameters = (name,)
    rows = connection.execute(query + " ORDER BY name, version", parameters).fetchall()
    return [_version(row) for row in rows]


def get_version(name: str, version: int, connection: sqlite3.Connection) -> VariantRecord:
    row = connection.execute(
        f"SELECT {_VERSION_COLUMNS} FROM variant_versions WHERE name = ? AND version = ?",
        (name, version),
    ).fetchone()
    if row is None:
        raise errors.NotFound(f"no variant {name}@{version}")
    return _version(row)


def promote(promotion: Promotion, now_us: int, connection: sqlite3.Connection) -> ChangeRecord:
    name, version = parse_or_invalid(promotion.variant, "variant")
    with write_transaction(connection):
        get_version(name, version, connection)
        change = plan_promotion(_all_changes(connection), promotion, from_micros(now_us))
        _insert_change(connection, change)
        return change


def rollback(actor: str, reason: str, now_us: int, connection: sqlite3.Connection) -> ChangeRecord:
    with write_transaction(connection):
        change = plan_rollback(_all_changes(connection), actor, reason, from_micros(now_us))
        _insert_change(connection, change)
        return change


def changes(limit: int, connection: sqlite3.Connection) -> list[ChangeRecord]:
    rows = connection.execute(
        f"SELECT {_CHANGE_COLUMNS} FROM variant_changes ORDER BY revision DESC LIMIT ?", (limit,)
    ).fetchall()
    return [_change(row) for row in rows]


def deployment(connection: sqlite3.Connection) -> Deployment:
    with read_transaction(connection):
        newest = changes(1, connection)
    return newest[0].after if newest else Deployment()


class SqliteVariantRegistry(VariantRegistryStore):
    """The registry's methods of the SQLite store (mixed into SqliteConversationStore)."""

    @abc.abstractmethod
    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T: ...

    @abc.abstractmethod
    def _now_us(self) -> int: ...

    async def push_variant(
        self, name: str, spec_json: str, spec_sha256: str, actor: str
    ) -> tuple[VariantRecord, bool]:
        return await self._run(
            functools.partial(push, name, spec_json, spec_sha256, actor, self._now_us())
        )

    async def list_variants(self, name: str | None = None) -> list[VariantRecord]:
        return await self._run(functools.partial(list_versions, name))

    async def get_variant(self, name: str, version: int) -> VariantRecord:
        return await self._run(functools.partial(get_version, name, version))

    async def promote_variant(self, promotion: Promotion) -> ChangeRecord:
        require_promotion(promotion)
        return await self._run(functools.partial(promote, promotion, self._now_us()))

    async def rollback_variant(self, actor: str, reason: str) -> ChangeRecord:
        return await self._run(functools.partial(rollback, actor, reason, self._now_us()))

    async def variant_changes(self, limit: int) -> list[ChangeRecord]:
        return await self._run(functools.partial(changes, limit))

    async def variant_deployment(self) -> Deployment:
        return await self._run(deployment)

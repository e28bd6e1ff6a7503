"""The variant registry in the system of record (docs/registry.md): immutable versions, the
deployment (production, canary and its share) and its recorded changes. The rules of a
promotion and a rollback live here; each push or change runs in one transaction holding the
registry's advisory lock, so versions and revisions are numbered without gaps or races.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chatplane.common import errors
from chatplane.common.variant_spec import identifier, parse_identifier
from chatplane.persistence.store.database import Connection, Database

CHANGES_LIMIT_MAX = 500


class Stage(enum.Enum):
    """Where a version stands."""

    CANDIDATE = "candidate"
    CANARY = "canary"
    PRODUCTION = "production"


@dataclass(frozen=True, slots=True)
class VariantRecord:
    """One stored, immutable version."""

    name: str
    version: int
    spec_json: str
    spec_sha256: str
    created_by: str
    create_time: datetime

    @property
    def identifier(self) -> str:
        return identifier(self.name, self.version)


@dataclass(frozen=True, slots=True)
class Deployment:
    """What serves traffic after a revision ('' for none)."""

    revision: int = 0
    production: str = ""
    canary: str = ""
    canary_share_percent: float = 0.0

    def stage_of(self, variant: str) -> tuple[Stage, float]:
        """A version's stage and share of users in percent."""
        if variant and variant == self.canary:
            return Stage.CANARY, self.canary_share_percent
        if variant and variant == self.production:
            return Stage.PRODUCTION, 100.0 - (self.canary_share_percent if self.canary else 0)
        return Stage.CANDIDATE, 0.0


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """One recorded change and the deployment after it."""

    revision: int
    change_time: datetime
    actor: str
    action: str  # "promote" | "rollback"
    stage: Stage
    from_variant: str
    to_variant: str
    from_share_percent: float
    to_share_percent: float
    reason: str
    after: Deployment


@dataclass(frozen=True, slots=True)
class Promotion:
    """A promotion to make."""

    variant: str
    stage: Stage
    share_percent: float
    actor: str
    reason: str


def require_promotion(promotion: Promotion) -> tuple[str, int]:
    """Checks what does not depend on the stored state; the version's name and number."""
    parsed = parse_or_invalid(promotion.variant, "variant")
    if promotion.stage is Stage.CANDIDATE:
        raise errors.InvalidArgument("stage", "promote to canary or production")
    if promotion.stage is Stage.CANARY and not 0 < promotion.share_percent < 100:
        raise errors.InvalidArgument("share_percent", "a canary's share is above 0 and below 100")
    if promotion.stage is Stage.PRODUCTION and promotion.share_percent:
        raise errors.InvalidArgument("share_percent", "only a canary has a share")
    return parsed


def parse_or_invalid(variant: str, field: str) -> tuple[str, int]:
    """NAME@VERSION, or INVALID_ARGUMENT on `field`."""
    try:
        return parse_identifier(variant)
    except ValueError as error:
        raise errors.InvalidArgument(field, str(error)) from None


def _production_stack(changes: Sequence[ChangeRecord]) -> list[str]:
    """Production versions in force, oldest first: a promotion pushes, a rollback pops."""
    stack: list[str] = []
    for change in changes:
        if change.stage is not Stage.PRODUCTION:
            continue
        if change.action == "rollback":
            if stack:
                stack.pop()
        elif not stack or stack[-1] != change.to_variant:
            stack.append(change.to_variant)
    return stack


def plan_promotion(
    changes: Sequence[ChangeRecord], promotion: Promotion, now: datetime
) -> ChangeRecord:
    """The change a promotion records, given every earlier change (oldest first)."""
    current = changes[-1].after if changes else Deployment()
    revision, target = current.revision + 1, promotion.variant

    def promote(
        stage: Stage, before: str, before_share: float, share: float, after: Deployment
    ) -> ChangeRecord:
        record = (stage, before, target, before_share, share, promotion.reason, after)
        return ChangeRecord(revision, now, promotion.actor, "promote", *record)

    if promotion.stage is Stage.CANARY:
        if not current.production:
            raise errors.FailedPrecondition(
                "a canary needs a production version: promote one to production first"
            )
        if target == current.production:
            raise errors.FailedPrecondition(f"{target} is the production version")
        after = Deployment(revision, current.production, target, promotion.share_percent)
        return promote(
            Stage.CANARY,
            current.canary,
            current.canary_share_percent,
            promotion.share_percent,
            after,
        )
    if target == current.production:
        raise errors.FailedPrecondition(f"{target} is already the production version")
    # The canary graduates (or, if another version, keeps running beside the new production).
    canary, share = (
        ("", 0.0) if current.canary == target else (current.canary, current.canary_share_percent)
    )
    after = Deployment(revision, target, canary, share)
    return promote(Stage.PRODUCTION, current.production, current.canary_share_percent, share, after)


def plan_rollback(
    changes: Sequence[ChangeRecord], actor: str, reason: str, now: datetime
) -> ChangeRecord:
    """Undo the last step: a running canary ends; otherwise production goes back to the
    version it replaced."""
    current = changes[-1].after if changes else Deployment()
    revision = current.revision + 1
    if current.canary:
        after = Deployment(revision, current.production, "", 0.0)
        record = (Stage.CANARY, current.canary, "", current.canary_share_percent, 0.0)
        return ChangeRecord(revision, now, actor, "rollback", *record, reason, after)
    stack = _production_stack(changes)
    if len(stack) < 2:
        raise errors.FailedPrecondition("no earlier production version to roll back to")
    after = Deployment(revision, stack[-2], "", 0.0)
    record = (Stage.PRODUCTION, current.production, stack[-2], 0.0, 0.0)
    return ChangeRecord(revision, now, actor, "rollback", *record, reason, after)


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
    """The newest `limit` changes, newest first; with None, every change, oldest first."""
    cursor = await connection.execute(
        f"SELECT {_CHANGE_COLUMNS} FROM variant_changes ORDER BY revision DESC LIMIT %s",
        (limit,),  # LIMIT NULL: no limit
    )
    changes = [_change(row) for row in await cursor.fetchall()]
    return changes if limit is not None else changes[::-1]


async def _insert_change(connection: Connection, change: ChangeRecord) -> None:
    await connection.execute(
        f"INSERT INTO variant_changes ({_CHANGE_COLUMNS})"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            *(change.revision, change.change_time, change.actor, change.action),
            *(change.stage.value, change.from_variant, change.to_variant),
            *(change.from_share_percent, change.to_share_percent, change.reason),
            *(change.after.production, change.after.canary, change.after.canary_share_percent),
        ),
    )


class VariantRegistry:
    """The registry's tables (`store.registry`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[Connection]:
        async with self._db.transaction() as connection:
            await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            yield connection

    async def push_variant(
        self, name: str, spec_json: str, spec_sha256: str, actor: str
    ) -> tuple[VariantRecord, bool]:
        """Stores the next version of `name`; when the latest has the same configuration it
        is returned instead (created False)."""
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
            values = (name, version, spec_json, spec_sha256, actor, self._db.clock())
            await connection.execute(
                f"INSERT INTO variant_versions ({_VERSION_COLUMNS})"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                values,
            )
            return _version(values), True

    async def list_variants(self, name: str | None = None) -> list[VariantRecord]:
        """Every stored version (of `name`), by name then version."""
        query = f"SELECT {_VERSION_COLUMNS} FROM variant_versions"
        parameters: tuple[Any, ...] = ()
        if name is not None:
            query += " WHERE name = %s"
            parameters = (name,)
        rows = await self._db.fetchall(query + " ORDER BY name, version", parameters)
        return [_version(row) for row in rows]

    async def get_variant(self, name: str, version: int) -> VariantRecord:
        """One version; NotFound when there is none."""
        async with self._db.connection() as connection:
            return await _get(connection, name, version)

    async def promote_variant(self, promotion: Promotion) -> ChangeRecord:
        """Records a promotion (the version must exist: NotFound otherwise)."""
        name, version = require_promotion(promotion)
        async with self._locked() as connection:
            await _get(connection, name, version)
            change = plan_promotion(await _changes(connection, None), promotion, self._db.clock())
            await _insert_change(connection, change)
            return change

    async def rollback_variant(self, actor: str, reason: str) -> ChangeRecord:
        """Records a rollback (FailedPrecondition when there is nothing to undo)."""
        async with self._locked() as connection:
            change = plan_rollback(
                await _changes(connection, None), actor, reason, self._db.clock()
            )
            await _insert_change(connection, change)
            return change

    async def variant_changes(self, limit: int) -> list[ChangeRecord]:
        """The newest `limit` changes, newest first."""
        async with self._db.connection() as connection:
            return await _changes(connection, limit)

    async def variant_deployment(self) -> Deployment:
        """What serves traffic now."""
        async with self._db.connection() as connection:
            newest = await _changes(connection, 1)
        return newest[0].after if newest else Deployment()

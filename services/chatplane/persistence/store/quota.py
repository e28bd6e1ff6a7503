"""Per-tenant daily token quotas in the system of record: the records, the UTC day arithmetic
and the ledger, `store.quota` (docs/quotas.md).

A turn reserves an estimate before it calls the model; the reservation is settled with the
tokens the turn really used (or released with zero). Reservations hold at most what is left
of the day's quota, so concurrent turns on any number of Gateway replicas never reserve more
than the quota; a turn that uses more than it reserved is settled anyway, and the next turn
is refused. A reservation never settled (its Gateway crashed) expires after its lease. Each
change runs in one transaction and first takes a transaction-level
advisory lock on the tenant, so every reservation and settlement of one tenant, from any
replica, sees one state; the reservation itself is the conditional
`UPDATE ... WHERE used + reserved < limit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg.errors

from chatplane.common import errors
from chatplane.persistence.store.database import (
    LOCK_CLASS_TENANT_QUOTA,
    Connection,
    Database,
    lock_key,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY = timedelta(days=1)


def utc_day(moment: datetime) -> int:
    """The UTC day `moment` falls on, as days since 1970-01-01 (quotas reset at UTC midnight)."""
    return (moment - _EPOCH) // _DAY


def day_reset_time(day: int) -> datetime:
    """When the usage of UTC day `day` stops counting: the next UTC midnight."""
    return _EPOCH + (day + 1) * _DAY


@dataclass(frozen=True, slots=True)
class TokenQuota:
    """A tenant's quota and its usage on one UTC day; `tokens_per_day` 0 means unlimited."""

    tenant_id: str
    tokens_per_day: int
    used_tokens: int
    reserved_tokens: int
    reset_time: datetime

    @property
    def unlimited(self) -> bool:
        """True when the tenant has no quota."""
        return self.tokens_per_day == 0

    @property
    def remaining_tokens(self) -> int:
        """What may still be reserved today (never negative)."""
        return max(0, self.tokens_per_day - self.used_tokens - self.reserved_tokens)


@dataclass(frozen=True, slots=True)
class QuotaReservation:
    """The outcome of a reservation: `granted` tokens (0 when unlimited or refused)."""

    granted: bool
    reserved_tokens: int
    quota: TokenQuota


class TokenQuotas:
    """The quota ledger: each call in one transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def reserve(
        self, tenant_id: str, reservation_id: str, tokens: int, lease: timedelta
    ) -> QuotaReservation:
        """Atomically reserve up to `tokens` of today's quota under `reservation_id`, held for
        `lease` unless settled. Refused when nothing is left; always granted (and nothing is
        recorded) for a tenant without a quota. Expired reservations are released first.
        A `reservation_id` used before is AlreadyExists."""
        now = self._db.clock()
        async with self._db.transaction() as connection:
            if await _limit(connection, tenant_id) == 0:
                return QuotaReservation(True, 0, await _read(connection, tenant_id, now))
            await _lock(connection, tenant_id)
            day = utc_day(now)
            await _sweep(connection, tenant_id, now)
            current = await _read(connection, tenant_id, now)
            # What was asked for, capped at what is left today (a turn may run while any of
            # the quota is left; what it uses beyond is settled anyway).
            size = min(tokens, current.remaining_tokens)
            if size <= 0:
                return QuotaReservation(False, 0, current)
            await connection.execute(
                "INSERT INTO token_usage (tenant_id, day) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (tenant_id, day),
            )
            # The lock makes this condition hold already; the WHERE keeps the invariant in the
            # statement itself, so a change that dropped the lock could not overspend silently.
            cursor = await connection.execute(
                "UPDATE token_usage u SET reserved_tokens = u.reserved_tokens + %s"
                " FROM token_quotas q WHERE u.tenant_id = %s AND u.day = %s"
                " AND q.tenant_id = u.tenant_id"
                " AND u.used_tokens + u.reserved_tokens + %s <= q.tokens_per_day"
                " RETURNING u.used_tokens",
                (size, tenant_id, day, size),
            )
            if await cursor.fetchone() is None:
                return QuotaReservation(False, 0, current)
            try:
                await connection.execute(
                    "INSERT INTO token_reservations"
                    " (reservation_id, tenant_id, day, tokens, expire_time)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (reservation_id, tenant_id, day, size, now + lease),
                )
            except psycopg.errors.UniqueViolation as error:
                raise errors.AlreadyExists("the reservation exists already") from error
            return QuotaReservation(True, size, await _read(connection, tenant_id, now))

    async def settle(self, tenant_id: str, reservation_id: str, used: int) -> TokenQuota:
        """Replace the reservation with the `used` tokens (0 releases it), on the day it was
        reserved. A reservation that expired or was never recorded still charges `used` to
        today when the tenant has a quota."""
        now = self._db.clock()
        async with self._db.transaction() as connection:
            await _lock(connection, tenant_id)
            cursor = await connection.execute(
                "DELETE FROM token_reservations WHERE reservation_id = %s AND tenant_id = %s"
                " RETURNING day, tokens",
                (reservation_id, tenant_id),
            )
            row = await cursor.fetchone()
            if row is not None:
                await _add_usage(connection, tenant_id, int(row[0]), used, -int(row[1]))
            elif used > 0 and await _limit(connection, tenant_id) > 0:
                await _add_usage(connection, tenant_id, utc_day(now), used, 0)
            return await _read(connection, tenant_id, now)

    async def set_limit(self, tenant_id: str, tokens_per_day: int) -> TokenQuota:
        """Set the tenant's daily quota; 0 removes it (unlimited). Today's usage is kept."""
        now = self._db.clock()
        async with self._db.transaction() as connection:
            await _lock(connection, tenant_id)
            if tokens_per_day == 0:
                await connection.execute(
                    "DELETE FROM token_quotas WHERE tenant_id = %s", (tenant_id,)
                )
            else:
                await connection.execute(
                    "INSERT INTO token_quotas (tenant_id, tokens_per_day, update_time)"
                    " VALUES (%s, %s, %s) ON CONFLICT (tenant_id) DO UPDATE SET"
                    " tokens_per_day = excluded.tokens_per_day,"
                    " update_time = excluded.update_time",
                    (tenant_id, tokens_per_day, now),
                )
            return await _read(connection, tenant_id, now)

    async def get(self, tenant_id: str) -> TokenQuota:
        """The tenant's quota and today's usage."""
        async with self._db.connection() as connection:
            return await _read(connection, tenant_id, self._db.clock())


async def _read(connection: Connection, tenant_id: str, now: datetime) -> TokenQuota:
    """The tenant's quota and the usage of the UTC day of `now`."""
    day = utc_day(now)
    cursor = await connection.execute(
        "SELECT coalesce((SELECT tokens_per_day FROM token_quotas WHERE tenant_id = %s), 0),"
        " coalesce(u.used_tokens, 0), coalesce(u.reserved_tokens, 0)"
        " FROM (SELECT 1) one LEFT JOIN token_usage u ON u.tenant_id = %s AND u.day = %s",
        (tenant_id, tenant_id, day),
    )
    row = await cursor.fetchone()
    assert row is not None  # one row by construction
    return TokenQuota(tenant_id, int(row[0]), int(row[1]), int(row[2]), day_reset_time(day))


async def _limit(connection: Connection, tenant_id: str) -> int:
    cursor = await connection.execute(
        "SELECT tokens_per_day FROM token_quotas WHERE tenant_id = %s", (tenant_id,)
    )
    row = await cursor.fetchone()
    return 0 if row is None else int(row[0])


async def _lock(connection: Connection, tenant_id: str) -> None:
    await connection.execute(
        "SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS_TENANT_QUOTA, lock_key(tenant_id))
    )


async def _sweep(connection: Connection, tenant_id: str, now: datetime) -> None:
    """Release the tenant's reservations whose lease ran out (their turn never settled)."""
    cursor = await connection.execute(
        "DELETE FROM token_reservations WHERE tenant_id = %s AND expire_time <= %s"
        " RETURNING day, tokens",
        (tenant_id, now),
    )
    for day, tokens in await cursor.fetchall():
        await _add_usage(connection, tenant_id, int(day), 0, -int(tokens))


async def _add_usage(
    connection: Connection, tenant_id: str, day: int, used: int, reserved: int
) -> None:
    await connection.execute(
        "INSERT INTO token_usage (tenant_id, day, used_tokens, reserved_tokens)"
        " VALUES (%s, %s, %s, greatest(%s, 0))"
        " ON CONFLICT (tenant_id, day) DO UPDATE SET"
        " used_tokens = token_usage.used_tokens + excluded.used_tokens,"
        " reserved_tokens = greatest(token_usage.reserved_tokens + %s, 0)",
        (tenant_id, day, used, reserved, reserved),
    )

"""Token quotas on the embedded store (SQLite): each function runs inside the caller's write
transaction (BEGIN IMMEDIATE), which serialises every writer of the file, so a reservation's
check and its write see one state (docs/quotas.md)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

from chatplane.common import errors
from chatplane.persistence.store.base import to_micros
from chatplane.persistence.store.quota import (
    QuotaReservation,
    TokenQuota,
    day_reset_time,
    reservation_size,
    utc_day,
)


def reserve(
    connection: sqlite3.Connection,
    tenant_id: str,
    reservation_id: str,
    tokens: int,
    lease: timedelta,
    now: datetime,
) -> QuotaReservation:
    """See TokenQuotaLedger.reserve_tokens."""
    if _limit(connection, tenant_id) == 0:
        return QuotaReservation(True, 0, quota(connection, tenant_id, now))
    day = utc_day(now)
    now_us = to_micros(now)
    _sweep(connection, tenant_id, now_us)
    current = quota(connection, tenant_id, now)
    size = reservation_size(tokens, current)
    if size <= 0:
        return QuotaReservation(False, 0, current)
    try:
        connection.execute(
            "INSERT INTO token_reservations"
            " (reservation_id, tenant_id, day, tokens, expire_time_us) VALUES (?, ?, ?, ?, ?)",
            (reservation_id, tenant_id, day, size, now_us + lease // timedelta(microseconds=1)),
        )
    except sqlite3.IntegrityError as error:
        raise errors.AlreadyExists("the reservation exists already") from error
    _add_usage(connection, tenant_id, day, used=0, reserved=size)
    return QuotaReservation(True, size, quota(connection, tenant_id, now))


def settle(
    connection: sqlite3.Connection, tenant_id: str, reservation_id: str, used: int, now: datetime
) -> TokenQuota:
    """See TokenQuotaLedger.settle_tokens."""
    row = connection.execute(
        "DELETE FROM token_reservations WHERE reservation_id = ? AND tenant_id = ?"
        " RETURNING day, tokens",
        (reservation_id, tenant_id),
    ).fetchone()
    if row is not None:
        _add_usage(connection, tenant_id, int(row[0]), used=used, reserved=-int(row[1]))
    elif used > 0 and _limit(connection, tenant_id) > 0:
        _add_usage(connection, tenant_id, utc_day(now), used=used, reserved=0)
    return quota(connection, tenant_id, now)


def set_limit(
    connection: sqlite3.Connection, tenant_id: str, tokens_per_day: int, now: datetime
) -> TokenQuota:
    """See TokenQuotaLedger.set_token_quota."""
    if tokens_per_day == 0:
        connection.execute("DELETE FROM token_quotas WHERE tenant_id = ?", (tenant_id,))
    else:
        connection.execute(
            "INSERT INTO token_quotas (tenant_id, tokens_per_day, update_time_us) VALUES (?, ?, ?)"
            " ON CONFLICT (tenant_id) DO UPDATE SET tokens_per_day = excluded.tokens_per_day,"
            " update_time_us = excluded.update_time_us",
            (tenant_id, tokens_per_day, to_micros(now)),
        )
    return quota(connection, tenant_id, now)


def quota(connection: sqlite3.Connection, tenant_id: str, now: datetime) -> TokenQuota:
    """The tenant's quota and the usage of the UTC day of `now`."""
    day = utc_day(now)
    row = connection.execute(
        "SELECT used_tokens, reserved_tokens FROM token_usage WHERE tenant_id = ? AND day = ?",
        (tenant_id, day),
    ).fetchone()
    used, reserved = (0, 0) if row is None else (int(row[0]), int(row[1]))
    return TokenQuota(tenant_id, _limit(connection, tenant_id), used, reserved, day_reset_time(day))


def _limit(connection: sqlite3.Connection, tenant_id: str) -> int:
    row = connection.execute(
        "SELECT tokens_per_day FROM token_quotas WHERE tenant_id = ?", (tenant_id,)
    ).fetchone()
    return 0 if row is None else int(row[0])


def _sweep(connection: sqlite3.Connection, tenant_id: str, now_us: int) -> None:
    """Release the tenant's reservations whose lease ran out (their turn never settled)."""
    expired = connection.execute(
        "DELETE FROM token_reservations WHERE tenant_id = ? AND expire_time_us <= ?"
        " RETURNING day, tokens",
        (tenant_id, now_us),
    ).fetchall()
    for day, tokens in expired:
        _add_usage(connection, tenant_id, int(day), used=0, reserved=-int(tokens))


def _add_usage(
    connection: sqlite3.Connection, tenant_id: str, day: int, *, used: int, reserved: int
) -> None:
    connection.execute(
        "INSERT INTO token_usage (tenant_id, day, used_tokens, reserved_tokens)"
        " VALUES (?, ?, ?, max(?, 0))"
        " ON CONFLICT (tenant_id, day) DO UPDATE SET"
        " used_tokens = used_tokens + excluded.used_tokens,"
        " reserved_tokens = max(reserved_tokens + ?, 0)",
        (tenant_id, day, used, reserved, reserved),
    )

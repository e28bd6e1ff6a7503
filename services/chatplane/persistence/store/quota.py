"""Per-tenant daily token quotas in the system of record: the records, the UTC day arithmetic,
and the `TokenQuotaLedger` interface every store engine implements (docs/quotas.md).

A turn reserves an estimate before it calls the model; the reservation is settled with the
tokens the turn really used (or released with zero). Reservations hold at most what is left
of the day's quota, so concurrent turns on any number of Gateway replicas never reserve more
than the quota; a turn that uses more than it reserved is settled anyway, and the next turn
is refused. A reservation never settled (its Gateway crashed) expires after its lease.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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


def reservation_size(requested: int, quota: TokenQuota) -> int:
    """Tokens a reservation holds: what was asked for, capped at what is left today (a turn
    may run while any of the quota is left; what it uses beyond is settled anyway)."""
    return min(requested, quota.remaining_tokens)


class TokenQuotaLedger(abc.ABC):
    """Daily token quotas of tenants, shared by every Gateway replica through the store."""

    @abc.abstractmethod
    async def reserve_tokens(
        self, tenant_id: str, reservation_id: str, tokens: int, lease: timedelta
    ) -> QuotaReservation:
        """Atomically reserve up to `tokens` of today's quota under `reservation_id`, held for
        `lease` unless settled. Refused when nothing is left; always granted (and nothing is
        recorded) for a tenant without a quota. Expired reservations are released first.
        A `reservation_id` used before is AlreadyExists."""

    @abc.abstractmethod
    async def settle_tokens(self, tenant_id: str, reservation_id: str, used: int) -> TokenQuota:
        """Replace the reservation with the `used` tokens (0 releases it), on the day it was
        reserved. A reservation that expired or was never recorded still charges `used` to
        today when the tenant has a quota."""

    @abc.abstractmethod
    async def set_token_quota(self, tenant_id: str, tokens_per_day: int) -> TokenQuota:
        """Set the tenant's daily quota; 0 removes it (unlimited). Today's usage is kept."""

    @abc.abstractmethod
    async def get_token_quota(self, tenant_id: str) -> TokenQuota:
        """The tenant's quota and today's usage."""

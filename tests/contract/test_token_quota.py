"""Contract of the token quota ledger (chatplane.persistence.store.quota), run against every
store engine: atomic reservations that never exceed the quota, even from many concurrent
callers on several stores (replicas) of one database; settlement from the usage; release;
expiry of reservations never settled; the UTC day rollover on a clock the test moves."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from chatplane.common import errors
from chatplane.common.ids import new_id
from chatplane.persistence.store.base import ConversationStore
from chatplane.persistence.store.quota import day_reset_time, utc_day
from tests.contract.store_fixtures import (  # noqa: F401 (fixtures are found by name)
    FakeClock,
    StoreTarget,
    clock_fixture,
    module_database_fixture,
    postgres_dsn_fixture,
    store_fixture,
    store_target_fixture,
)

TENANT = "tenant-q"
LEASE = timedelta(minutes=5)
DAY_LEASE = timedelta(days=1)
NEXT_MIDNIGHT = datetime(2026, 1, 2, tzinfo=UTC)  # FakeClock starts at 2026-01-01 12:00 UTC


def test_day_boundary_is_utc_midnight() -> None:
    assert utc_day(datetime(1970, 1, 1, 23, 59, 59, tzinfo=UTC)) == 0
    assert utc_day(datetime(1970, 1, 2, tzinfo=UTC)) == 1
    assert day_reset_time(utc_day(datetime(2026, 1, 1, 12, tzinfo=UTC))) == NEXT_MIDNIGHT


async def test_tenant_without_quota_is_unlimited(store: ConversationStore) -> None:
    reservation = await store.quota.reserve(TENANT, new_id(), 10**9, LEASE)
    assert reservation.granted and reservation.reserved_tokens == 0
    assert reservation.quota.unlimited
    quota = await store.quota.settle(TENANT, new_id(), 500)
    assert (quota.used_tokens, quota.reserved_tokens) == (0, 0)


async def test_reserve_until_spent_then_refused_with_reset_time(store: ConversationStore) -> None:
    await store.quota.set_limit(TENANT, 1000)
    first = await store.quota.reserve(TENANT, new_id(), 600, LEASE)
    assert first.granted and first.reserved_tokens == 600
    # What is left is reserved, not more: the turn may run, its overuse settles later.
    second = await store.quota.reserve(TENANT, new_id(), 600, LEASE)
    assert second.granted and second.reserved_tokens == 400
    third = await store.quota.reserve(TENANT, new_id(), 1, LEASE)
    assert not third.granted and third.reserved_tokens == 0
    assert third.quota.reset_time == NEXT_MIDNIGHT
    assert (third.quota.used_tokens, third.quota.reserved_tokens) == (0, 1000)


async def test_concurrent_reservations_on_two_stores_never_exceed_the_quota(
    store: ConversationStore, store_target: StoreTarget, clock: FakeClock
) -> None:
    # Two stores on one database stand for two Persistence replicas behind two Gateways.
    other = await store_target.open(clock)
    try:
        await store.quota.set_limit(TENANT, 1000)
        results = await asyncio.gather(
            *(
                (store if i % 2 else other).quota.reserve(TENANT, new_id(), 100, LEASE)
                for i in range(50)
            )
        )
    finally:
        await other.close()
    granted = [r.reserved_tokens for r in results if r.granted]
    assert granted == [100] * 10
    quota = await store.quota.get(TENANT)
    assert (quota.used_tokens, quota.reserved_tokens) == (0, 1000)


async def test_settle_replaces_the_reservation_with_the_usage(store: ConversationStore) -> None:
    await store.quota.set_limit(TENANT, 1000)
    reservation_id = new_id()
    await store.quota.reserve(TENANT, reservation_id, 500, LEASE)
    quota = await store.quota.settle(TENANT, reservation_id, 120)
    assert (quota.used_tokens, quota.reserved_tokens) == (120, 0)
    assert (await store.quota.reserve(TENANT, new_id(), 880, LEASE)).reserved_tokens == 880


async def test_overuse_settles_anyway_and_the_next_turn_is_refused(
    store: ConversationStore,
) -> None:
    await store.quota.set_limit(TENANT, 1000)
    reservation_id = new_id()
    await store.quota.reserve(TENANT, reservation_id, 300, LEASE)
    quota = await store.quota.settle(TENANT, reservation_id, 1700)
    assert quota.used_tokens == 1700 and quota.remaining_tokens == 0
    assert not (await store.quota.reserve(TENANT, new_id(), 1, LEASE)).granted


async def test_release_gives_the_tokens_back(store: ConversationStore) -> None:
    await store.quota.set_limit(TENANT, 1000)
    reservation_id = new_id()
    await store.quota.reserve(TENANT, reservation_id, 1000, LEASE)
    assert not (await store.quota.reserve(TENANT, new_id(), 1, LEASE)).granted
    quota = await store.quota.settle(TENANT, reservation_id, 0)
    assert (quota.used_tokens, quota.reserved_tokens) == (0, 0)
    assert (await store.quota.reserve(TENANT, new_id(), 1000, LEASE)).granted


async def test_reservation_of_a_crashed_turn_expires(
    store: ConversationStore, clock: FakeClock
) -> None:
    await store.quota.set_limit(TENANT, 1000)
    await store.quota.reserve(TENANT, new_id(), 1000, LEASE)  # never settled
    clock.advance(seconds=LEASE.total_seconds() - 1)
    assert not (await store.quota.reserve(TENANT, new_id(), 1, LEASE)).granted
    clock.advance(seconds=2)
    reservation = await store.quota.reserve(TENANT, new_id(), 1000, LEASE)
    assert reservation.granted and reservation.reserved_tokens == 1000


async def test_late_settle_of_an_expired_reservation_still_charges(
    store: ConversationStore, clock: FakeClock
) -> None:
    await store.quota.set_limit(TENANT, 1000)
    reservation_id = new_id()
    await store.quota.reserve(TENANT, reservation_id, 400, LEASE)
    clock.advance(seconds=LEASE.total_seconds() + 1)
    await store.quota.reserve(TENANT, new_id(), 100, LEASE)  # sweeps the expired one
    quota = await store.quota.settle(TENANT, reservation_id, 250)
    assert (quota.used_tokens, quota.reserved_tokens) == (250, 100)


async def test_usage_resets_at_utc_midnight(store: ConversationStore, clock: FakeClock) -> None:
    # Leases that outlive the 12 hours to midnight, so only the day changes what is left.
    await store.quota.set_limit(TENANT, 1000)
    late = new_id()
    await store.quota.reserve(TENANT, new_id(), 600, DAY_LEASE)
    await store.quota.reserve(TENANT, late, 400, DAY_LEASE)
    refused = await store.quota.reserve(TENANT, new_id(), 1, DAY_LEASE)
    assert not refused.granted and refused.quota.reset_time == NEXT_MIDNIGHT
    clock.now = NEXT_MIDNIGHT - timedelta(microseconds=1)
    assert not (await store.quota.reserve(TENANT, new_id(), 1, DAY_LEASE)).granted
    clock.now = NEXT_MIDNIGHT
    fresh = await store.quota.reserve(TENANT, new_id(), 1000, DAY_LEASE)
    assert fresh.granted and fresh.reserved_tokens == 1000
    assert fresh.quota.reset_time == NEXT_MIDNIGHT + timedelta(days=1)
    # A turn that began yesterday is charged to yesterday, not to the new day.
    quota = await store.quota.settle(TENANT, late, 400)
    assert (quota.used_tokens, quota.reserved_tokens) == (0, 1000)


async def test_quota_can_be_changed_and_removed(store: ConversationStore) -> None:
    quota = await store.quota.set_limit(TENANT, 500)
    assert quota.tokens_per_day == 500 and quota.reset_time == NEXT_MIDNIGHT
    await store.quota.reserve(TENANT, new_id(), 500, LEASE)
    assert not (await store.quota.reserve(TENANT, new_id(), 1, LEASE)).granted
    assert (await store.quota.set_limit(TENANT, 2000)).remaining_tokens == 1500
    assert (await store.quota.set_limit(TENANT, 0)).unlimited
    assert (await store.quota.reserve(TENANT, new_id(), 10**6, LEASE)).granted
    assert (await store.quota.get("another-tenant")).unlimited


async def test_quotas_are_per_tenant(store: ConversationStore) -> None:
    await store.quota.set_limit(TENANT, 100)
    await store.quota.set_limit("tenant-r", 100)
    await store.quota.reserve(TENANT, new_id(), 100, LEASE)
    assert (await store.quota.reserve("tenant-r", new_id(), 100, LEASE)).granted


async def test_a_reservation_id_is_used_once(store: ConversationStore) -> None:
    await store.quota.set_limit(TENANT, 1000)
    reservation_id = new_id()
    await store.quota.reserve(TENANT, reservation_id, 10, LEASE)
    with pytest.raises(errors.AlreadyExists):
        await store.quota.reserve(TENANT, reservation_id, 10, LEASE)
    quota = await store.quota.get(TENANT)
    assert quota.reserved_tokens == 10

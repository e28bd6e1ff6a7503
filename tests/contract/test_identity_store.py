"""Contract tests of key management and the audit chain in the system of record: the store
lists, rotates and revokes keys per tenant, audits each key change in the same transaction,
keeps one hash chain under concurrent appends, and the chain's verification finds any single
edited, removed or swapped record."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from chatplane import audit
from chatplane.audit.chain import AuditEvent, Verdict
from chatplane.common import errors
from chatplane.common.ids import new_id
from chatplane.persistence.store.base import ConversationStore, Owner
from chatplane.persistence.store.key_records import AuditActor, is_active
from tests.contract.store_fixtures import (  # noqa: F401 (fixtures are found by name)
    FakeClock,
    PostgresTarget,
    StoreTarget,
    clock_fixture,
    module_database_fixture,
    postgres_dsn_fixture,
    store_fixture,
    store_target_fixture,
)

ALICE = Owner("tenant-a", "alice")
BOB = Owner("tenant-a", "bob")
MALLORY = Owner("tenant-b", "mallory")
ADMIN = AuditActor("user:root", "ipv4:127.0.0.1:1", "req-1")


def execute(target: StoreTarget, statement: str, parameters: tuple[Any, ...] = ()) -> None:
    """Runs a writing statement around the store (as an attacker with database access)."""
    assert isinstance(target, PostgresTarget)
    with psycopg.connect(target.dsn, autocommit=True) as connection:
        connection.execute(statement, parameters)  # type: ignore[arg-type]


async def verdict(store: ConversationStore) -> Verdict:
    return audit.verify(await store.audit.records(0, 100_000), await store.audit.head())


def event(number: int, tenant: str = "tenant-a") -> AuditEvent:
    return AuditEvent(
        actor="key:x",
        tenant_id=tenant,
        action=audit.AUTH_FAILURE,
        object=f"attempt/{number}",
        outcome=audit.FAILURE,
        detail="invalid api key",
    )


async def test_key_creation_is_audited_in_its_transaction(store: ConversationStore) -> None:
    issued = await store.api_keys.create(ALICE, "laptop", frozenset({"chat", "admin"}), ADMIN)
    (record,) = await store.audit.records(0, 10)
    assert record.seq == 1
    assert record.event.action == audit.API_KEY_CREATE
    assert record.event.object == f"api_key/{issued.record.key_id}"
    assert record.event.tenant_id == "tenant-a"
    assert (record.event.actor, record.event.source, record.event.request_id) == (
        "user:root",
        "ipv4:127.0.0.1:1",
        "req-1",
    )
    assert "admin chat" in record.event.detail and "alice" in record.event.detail
    # No secret, nor its hash, in the record.
    assert issued.api_key.split("_")[2] not in repr(record)
    assert (await verdict(store)).ok
    # Without an actor the record says so.
    await store.api_keys.create(BOB, "")
    second = (await store.audit.records(1, 10))[0]
    assert second.event.actor == "unattributed" and second.prev_hash == record.hash


async def test_keys_are_listed_per_tenant_newest_first(
    store: ConversationStore, clock: FakeClock
) -> None:
    created = []
    for owner in (ALICE, BOB, ALICE, MALLORY, BOB):
        created.append(await store.api_keys.create(owner, f"label-{len(created)}"))
        clock.advance(seconds=1)
    page = await store.api_keys.page("tenant-a", limit=10)
    assert [k.key_id for k in page.keys] == [created[i].record.key_id for i in (4, 2, 1, 0)]
    assert page.next_cursor is None
    assert all(k.owner.tenant_id == "tenant-a" for k in page.keys)
    only_bob = await store.api_keys.page("tenant-a", "bob", limit=10)
    assert [k.key_id for k in only_bob.keys] == [created[i].record.key_id for i in (4, 1)]
    # Keyset paging: two pages of two, no repeats.
    first = await store.api_keys.page("tenant-a", limit=2)
    assert first.next_cursor is not None
    second = await store.api_keys.page("tenant-a", limit=2, after=first.next_cursor)
    assert [k.key_id for k in first.keys + second.keys] == [k.key_id for k in page.keys]
    assert second.next_cursor is None
    assert (await store.api_keys.page("tenant-c", limit=10)).keys == ()


async def test_revoked_keys_are_listed_only_when_asked(store: ConversationStore) -> None:
    kept = await store.api_keys.create(ALICE, "")
    gone = await store.api_keys.create(ALICE, "")
    await store.api_keys.revoke("tenant-a", gone.record.key_id, ADMIN)
    active = await store.api_keys.page("tenant-a", limit=10)
    assert [k.key_id for k in active.keys] == [kept.record.key_id]
    everything = await store.api_keys.page("tenant-a", limit=10, include_revoked=True)
    assert {k.key_id for k in everything.keys} == {kept.record.key_id, gone.record.key_id}


async def test_revoke_is_immediate_idempotent_and_audited(
    store: ConversationStore, clock: FakeClock
) -> None:
    issued = await store.api_keys.create(ALICE, "")
    key_id = issued.record.key_id
    revoked = await store.api_keys.revoke("tenant-a", key_id, ADMIN)
    assert revoked.revoked and revoked.expire_time == clock.now
    assert (await store.api_keys.get(key_id)).revoked
    again = await store.api_keys.revoke("tenant-a", key_id, ADMIN)
    assert again.revoked and again.expire_time == clock.now
    records = await store.audit.records(0, 10)
    assert [r.event.action for r in records] == [
        audit.API_KEY_CREATE,
        audit.API_KEY_REVOKE,
        audit.API_KEY_REVOKE,
    ]
    assert records[2].event.detail == "was revoked already"
    assert (await verdict(store)).ok


async def test_other_tenants_keys_are_not_found(store: ConversationStore) -> None:
    theirs = await store.api_keys.create(MALLORY, "")
    before = await store.audit.head()
    for attempt in (
        store.api_keys.revoke("tenant-a", theirs.record.key_id, ADMIN),
        store.api_keys.rotate("tenant-a", theirs.record.key_id, timedelta(0), ADMIN),
        store.api_keys.revoke("tenant-a", new_id(), ADMIN),
        store.api_keys.revoke("tenant-a", "not-an-id", ADMIN),
        store.api_keys.rotate("tenant-a", "not-an-id", timedelta(0), ADMIN),
    ):
        with pytest.raises(errors.NotFound, match="api key not found"):
            await attempt
    assert not (await store.api_keys.get(theirs.record.key_id)).revoked
    # Nothing changed, so nothing was chained.
    assert await store.audit.head() == before


async def test_rotation_without_overlap_revokes_the_old_key(
    store: ConversationStore, clock: FakeClock
) -> None:
    old = await store.api_keys.create(ALICE, "ci", frozenset({"operator"}))
    rotated = await store.api_keys.rotate("tenant-a", old.record.key_id, timedelta(0), ADMIN)
    new = rotated.issued.record
    assert rotated.issued.api_key.startswith(f"cp_{new.key_id}_")
    assert (new.owner, new.label, new.roles) == (ALICE, "ci", frozenset({"operator"}))
    assert new.key_id != old.record.key_id
    stored_old = await store.api_keys.get(old.record.key_id)
    assert stored_old.revoked and stored_old.replaced_by == new.key_id
    assert rotated.previous == stored_old
    assert is_active(await store.api_keys.get(new.key_id), clock.now)
    (record,) = [r for r in await store.audit.records(0, 10) if r.event.action != "api_key.create"]
    assert record.event.action == audit.API_KEY_ROTATE
    assert record.event.object == f"api_key/{old.record.key_id}"
    assert new.key_id in record.event.detail and "overlap 0 ms" in record.event.detail


async def test_rotation_with_overlap_keeps_the_old_key_until_it_ends(
    store: ConversationStore, clock: FakeClock
) -> None:
    old = await store.api_keys.create(ALICE, "")
    rotated = await store.api_keys.rotate(
        "tenant-a", old.record.key_id, timedelta(seconds=30), ADMIN
    )
    previous = await store.api_keys.get(old.record.key_id)
    assert not previous.revoked and previous.expire_time == clock.now + timedelta(seconds=30)
    assert is_active(previous, clock.now)
    listed = await store.api_keys.page("tenant-a", limit=10)
    assert len(listed.keys) == 2
    clock.advance(seconds=31)
    assert not is_active(await store.api_keys.get(old.record.key_id), clock.now)
    listed = await store.api_keys.page("tenant-a", limit=10)
    assert [k.key_id for k in listed.keys] == [rotated.issued.record.key_id]


async def test_only_a_live_unrotated_key_can_be_rotated(store: ConversationStore) -> None:
    old = await store.api_keys.create(ALICE, "")
    await store.api_keys.rotate("tenant-a", old.record.key_id, timedelta(seconds=60), ADMIN)
    with pytest.raises(errors.FailedPrecondition, match="rotated already"):
        await store.api_keys.rotate("tenant-a", old.record.key_id, timedelta(0), ADMIN)
    revoked = await store.api_keys.create(ALICE, "")
    await store.api_keys.revoke("tenant-a", revoked.record.key_id, ADMIN)
    with pytest.raises(errors.FailedPrecondition, match="revoked"):
        await store.api_keys.rotate("tenant-a", revoked.record.key_id, timedelta(0), ADMIN)


async def test_audit_appends_chain_in_order(store: ConversationStore) -> None:
    assert await store.audit.head() == audit.EMPTY_HEAD
    assert (await verdict(store)).ok
    head = await store.audit.append([event(i) for i in range(3)])
    assert head.seq == 3
    records = await store.audit.records(0, 10)
    assert [r.seq for r in records] == [1, 2, 3]
    assert [r.event.object for r in records] == ["attempt/0", "attempt/1", "attempt/2"]
    assert records[0].prev_hash == audit.GENESIS_HASH
    assert head.hash == records[-1].hash
    assert all(r.event.event_time is not None for r in records)
    assert [r.seq for r in await store.audit.records(1, 1)] == [2]
    assert (await verdict(store)).ok


async def test_concurrent_appenders_keep_one_chain(
    store_target: StoreTarget, clock: FakeClock
) -> None:
    """Two stores on one database (two Persistence replicas) appending at once."""
    first, second = await store_target.open(clock), await store_target.open(clock)
    try:

        async def appender(store: ConversationStore, name: str) -> None:
            for batch in range(8):
                await store.audit.append([event(batch * 10 + i, name) for i in range(5)])

        await asyncio.gather(
            appender(first, "tenant-1"),
            appender(second, "tenant-2"),
            *(
                first.api_keys.create(ALICE, "", actor=ADMIN),
                second.api_keys.create(BOB, "", actor=ADMIN),
            ),
        )
        records = await first.audit.records(0, 1000)
        assert [r.seq for r in records] == list(range(1, 83))
        assert (await verdict(second)).ok
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize("tamper", ["edit", "remove", "remove_last", "swap", "edit_time"])
async def test_verification_finds_any_single_tampered_record(
    store_target: StoreTarget, store: ConversationStore, tamper: str
) -> None:
    await store.api_keys.create(ALICE, "", actor=ADMIN)
    await store.audit.append([event(i) for i in range(5)])
    assert (await verdict(store)).ok
    if tamper == "edit":
        execute(store_target, "UPDATE audit_log SET outcome = %s WHERE seq = 3", ("success",))
        expected = 3
    elif tamper == "edit_time":
        execute(
            store_target, "UPDATE audit_log SET event_time_us = event_time_us + 1 WHERE seq = 4"
        )
        expected = 4
    elif tamper == "remove":
        execute(store_target, "DELETE FROM audit_log WHERE seq = 4")
        expected = 5  # where record 4 was expected
    elif tamper == "remove_last":
        execute(store_target, "DELETE FROM audit_log WHERE seq = 6")
        expected = 6
    else:
        # Reorder: records 2 and 3 trade places (everything but their seq).
        columns = (
            "event_time_us, actor, tenant_id, action, object, outcome, detail, source,"
            " request_id, prev_hash, hash"
        )
        rows = {
            seq: row
            for seq, *row in store_target.rows(
                f"SELECT seq, {columns} FROM audit_log WHERE seq IN (2, 3)"
            )
        }
        assignments = ", ".join(f"{c.strip()} = %s" for c in columns.split(","))
        for seq, other in ((2, 3), (3, 2)):
            execute(
                store_target,
                f"UPDATE audit_log SET {assignments} WHERE seq = %s",
                (*rows[other], seq),
            )
        expected = 2
    result = await verdict(store)
    assert not result.ok
    assert result.bad_seq == expected, result
    assert result.problem
    assert result.checked == (3 if tamper == "remove" else expected - 1)


async def test_hostile_text_is_chained_and_verifies(store: ConversationStore) -> None:
    hostile = AuditEvent(
        actor="key:\x00",
        tenant_id="t\udc80",
        action=audit.AUTH_FAILURE,
        object="credential/jwt",
        outcome=audit.FAILURE,
        detail="kid 'a\x00b' " + "x" * 5000,
    )
    await store.audit.append([hostile])
    (record,) = await store.audit.records(0, 10)
    assert record.event.actor == "key:\ufffd" and record.event.tenant_id == "t?"
    assert len(record.event.detail) == 512
    assert (await verdict(store)).ok

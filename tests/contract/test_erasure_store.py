"""Contract of erasure and retention in the system of record (chatplane.persistence.store.erasure),
run against every store engine: a user's rows go from every table and nobody else's do; an
erasure job's progress survives reopening the store and is audited exactly once; retention
deletes only conversations past the tenant's period, on a clock the test moves."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chatplane.audit.chain import verify
from chatplane.common import errors
from chatplane.persistence.store.base import (
    ConversationStore,
    Feedback,
    Owner,
    Rating,
    Role,
    TurnRequest,
)
from chatplane.persistence.store.erasure import ANONYMISED_TOMBSTONES, ERASED_TABLES
from chatplane.persistence.store.handoff import HandoffChange, HandoffMode, HandoffTrigger
from chatplane.persistence.store.key_records import AuditActor
from tests.contract.store_fixtures import (  # noqa: F401 (fixtures are found by name)
    FakeClock,
    MessageFactory,
    StoreTarget,
    clock_fixture,
    make_message_fixture,
    module_database_fixture,
    postgres_dsn_fixture,
    store_fixture,
    store_target_fixture,
)

ERASED = Owner("tenant-e", "erased-user")
KEPT = Owner("tenant-e", "kept-user")
CANARY = "canary-7f3e9a1b"
STEPS = ("data_key", "system_of_record", "memory_index", "message_log")
ACTOR = AuditActor("user:admin", "test", "req-1")
# Every table with a user's data, and how to count one user's rows in it.
_BY_OWNER = (
    "conversations",
    "messages",
    "feedback",
    "turns",
    "handoffs",
    "api_keys",
    "deleted_conversations",
)


async def _seed(store: ConversationStore, make_message: MessageFactory, owner: Owner) -> str:
    """A turn with both messages (canary in both), feedback, deltas, a handoff, a key, and a
    deleted conversation of `owner`; the live conversation's id."""
    ids = []
    for _ in range(2):
        reservation = await store.begin_turn(
            TurnRequest(
                owner=owner,
                conversation_id="",
                client_message_id="",
                user_message_id=make_message(owner, "x").message_id,
                assistant_message_id=make_message(owner, "x").message_id,
                title=f"about {CANARY}",
                lease=timedelta(seconds=30),
            )
        )
        await store.write_messages(
            [
                make_message(
                    owner,
                    reservation.conversation_id,
                    message_id=reservation.user_message_id,
                    text=f"my secret is {CANARY} {owner.user_id}",
                ),
                make_message(
                    owner,
                    reservation.conversation_id,
                    message_id=reservation.assistant_message_id,
                    role=Role.ASSISTANT,
                    text=f"noted: {CANARY} {owner.user_id}",
                    delta_ends=(3, 10),
                ),
            ]
        )
        await store.submit_feedback(
            owner, Feedback(reservation.assistant_message_id, Rating.THUMBS_DOWN, CANARY)
        )
        ids.append(reservation.conversation_id)
    await store.handoffs.change(
        owner, ids[0], HandoffChange(HandoffMode.HUMAN, HandoffTrigger.USER, owner.user_id, CANARY)
    )
    await store.api_keys.create(owner, "laptop")
    await store.delete_conversation(owner, ids[1])
    return ids[0]


def _rows_of(target: StoreTarget, owner: Owner) -> dict[str, int]:
    counts = {
        table: target.rows(
            f"SELECT count(*) FROM {table}"
            f" WHERE tenant_id = '{owner.tenant_id}' AND user_id = '{owner.user_id}'"
        )[0][0]
        for table in _BY_OWNER
    }
    for table in ("answer_deltas", "answer_metrics"):
        counts[table] = target.rows(
            f"SELECT count(*) FROM {table} WHERE message_id IN (SELECT message_id FROM messages"
            f" WHERE tenant_id = '{owner.tenant_id}' AND user_id = '{owner.user_id}')"
        )[0][0]
    return counts


def _canary_rows(target: StoreTarget) -> int:
    return sum(
        target.rows(f"SELECT count(*) FROM {table} WHERE {column} LIKE '%{CANARY}%'")[0][0]
        for table, column in (
            ("messages", "text"),
            ("conversations", "title"),
            ("feedback", "comment"),
            ("handoffs", "reason"),
        )
    )


async def test_erase_user_rows_removes_every_row_of_the_user_and_no_other(
    store: ConversationStore, store_target: StoreTarget, make_message: MessageFactory
) -> None:
    await _seed(store, make_message, ERASED)
    kept_conversation = await _seed(store, make_message, KEPT)
    kept_before = _rows_of(store_target, KEPT)
    assert all(kept_before.values())

    removed = await store.erasures.erase_user_rows(ERASED.tenant_id, ERASED.user_id)

    assert set(removed) == {*ERASED_TABLES, ANONYMISED_TOMBSTONES}
    assert removed["conversations"] == 1 and removed["messages"] == 2
    assert removed["feedback"] == 1 and removed["api_keys"] == 1
    assert removed[ANONYMISED_TOMBSTONES] == 1
    assert set(_rows_of(store_target, ERASED).values()) == {0}
    assert _rows_of(store_target, KEPT) == kept_before
    # Only the kept user's canaries are left.
    assert _canary_rows(store_target) == 5  # title, 2 messages, feedback, handoff reason
    history = await store.get_conversation(KEPT, kept_conversation, limit=10)
    assert len(history.messages) == 2
    # Idempotent: nothing more to remove.
    again = await store.erasures.erase_user_rows(ERASED.tenant_id, ERASED.user_id)
    assert set(again.values()) == {0}


async def test_erased_conversation_is_not_brought_back_by_a_late_log_record(
    store: ConversationStore, make_message: MessageFactory
) -> None:
    conversation = await _seed(store, make_message, ERASED)
    await store.erasures.erase_user_rows(ERASED.tenant_id, ERASED.user_id)
    await store.write_messages([make_message(ERASED, conversation, text=CANARY)])
    assert not (await store.list_conversations(ERASED, limit=10)).conversations


async def test_erasure_job_survives_reopening_and_is_audited_once(
    store: ConversationStore,
    store_target: StoreTarget,
    clock: FakeClock,
    make_message: MessageFactory,
) -> None:
    await _seed(store, make_message, ERASED)
    job = await store.erasures.start(ERASED.tenant_id, ERASED.user_id, STEPS, ACTOR)
    assert [step.name for step in job.steps] == list(STEPS)
    assert len(job.conversation_ids) == 2 and not job.finished
    await store.erasures.finish_step(job.job_id, 0, {"data_keys": 1})
    await store.close()

    reopened = await store_target.open(clock)
    try:
        (unfinished,) = await reopened.erasures.unfinished()
        assert unfinished.job_id == job.job_id
        assert [step.done for step in unfinished.steps] == [True, False, False, False]
        assert dict(unfinished.steps[0].removed) == {"data_keys": 1}
        # A repeated call resumes the same job; a step finished twice keeps its first counts.
        same = await reopened.erasures.start(ERASED.tenant_id, ERASED.user_id, STEPS, ACTOR)
        assert same.job_id == job.job_id
        await reopened.erasures.finish_step(job.job_id, 0, {"data_keys": 0})
        for position in range(1, len(STEPS)):
            await reopened.erasures.finish_step(job.job_id, position, {"rows": position})
        head_before = await reopened.audit.head()
        done = await reopened.erasures.finish(job.job_id)
        assert done.finished and dict(done.steps[0].removed) == {"data_keys": 1}
        await reopened.erasures.finish(job.job_id)
        records = await reopened.audit.records(head_before.seq, 100)
        assert [(r.event.action, r.event.object, r.event.actor) for r in records] == [
            ("user.erase", "user/tenant-e/erased-user", "user:admin")
        ]
        assert CANARY not in records[0].event.detail and job.job_id in records[0].event.detail
        assert verify(await reopened.audit.records(0, 1000), await reopened.audit.head()).ok
        assert not await reopened.erasures.unfinished()
        # After a finished job, a new call starts a new one.
        fresh = await reopened.erasures.start(ERASED.tenant_id, ERASED.user_id, STEPS, ACTOR)
        assert fresh.job_id != job.job_id and fresh.conversation_ids == job.conversation_ids
    finally:
        await reopened.close()


async def test_retention_deletes_only_conversations_past_the_period(
    store: ConversationStore, clock: FakeClock, make_message: MessageFactory
) -> None:
    tenant = KEPT.tenant_id
    assert (await store.retention.get(tenant)).days == 0
    assert not await store.retention.policies()
    with pytest.raises(errors.InvalidArgument):
        await store.retention.set(tenant, -1)
    policy = await store.retention.set(tenant, 30)
    assert (policy.days, policy.update_time) == (30, clock.now)

    old = make_message(KEPT, "c-old-" + make_message(KEPT, "x").message_id)
    await store.write_messages([old])
    clock.advance(days=20)
    recent = make_message(KEPT, "c-new-" + make_message(KEPT, "x").message_id)
    other_tenant = make_message(Owner("tenant-other", "u"), "c-oth-" + old.message_id)
    await store.write_messages([recent, other_tenant])
    clock.advance(days=15)

    before = clock.now - timedelta(days=30)
    expired = await store.retention.expire(tenant, before, 100)
    assert [(e.user_id, e.conversation_id) for e in expired] == [
        (KEPT.user_id, old.conversation_id)
    ]
    # Pending until the sweep removed its memory turns and log records.
    assert await store.retention.pending(10) == expired
    await store.retention.finish_pending([old.conversation_id])
    assert not await store.retention.pending(10)
    left = (await store.list_conversations(KEPT, limit=10)).conversations
    assert [c.conversation_id for c in left] == [recent.conversation_id]
    assert not await store.retention.expire(tenant, before, 100)
    # A late record of an expired conversation does not bring it back.
    await store.write_messages([make_message(KEPT, old.conversation_id)])
    assert len((await store.list_conversations(KEPT, limit=10)).conversations) == 1

    assert [p.tenant_id for p in await store.retention.policies()] == [tenant]
    assert (await store.retention.set(tenant, 0)).days == 0
    assert not await store.retention.policies()

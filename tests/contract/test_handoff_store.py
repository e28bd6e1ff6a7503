"""Contract of the handoff part of the system of record (docs/handoff.md) on every engine:
mode changes, rules that fire once, the tenant's waiting list, operator lookups, thumbs-down
counts and operator replies stored with their author."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from chatplane.common import errors
from chatplane.common.ids import new_id
from chatplane.persistence.store.base import (
    ConversationStore,
    Feedback,
    Owner,
    Rating,
    Role,
    TurnRequest,
)
from chatplane.persistence.store.handoff import HandoffChange, HandoffMode, HandoffTrigger
from tests.contract.store_fixtures import (  # noqa: F401 (fixtures are found by name)
    FakeClock,
    MessageFactory,
    clock_fixture,
    make_message_fixture,
    module_database_fixture,
    postgres_dsn_fixture,
    store_fixture,
    store_target_fixture,
)

ALICE = Owner("tenant-a", "alice")
BOB = Owner("tenant-a", "bob")
ALICE_ELSEWHERE = Owner("tenant-b", "alice")

HUMAN_BY_USER = HandoffChange(HandoffMode.HUMAN, HandoffTrigger.USER, "alice", "billing")
BOT_BY_USER = HandoffChange(HandoffMode.BOT, HandoffTrigger.USER, "alice")


async def conversation(store: ConversationStore, owner: Owner = ALICE) -> str:
    reservation = await store.begin_turn(
        TurnRequest(owner, "", "", new_id(), new_id(), "A chat", timedelta(seconds=30))
    )
    return reservation.conversation_id


async def test_a_conversation_starts_with_the_bot(store: ConversationStore) -> None:
    conversation_id = await conversation(store)
    state = await store.handoffs.get(ALICE, conversation_id)
    assert state.mode is HandoffMode.BOT and state.trigger is None and not state.changed
    for owner in (BOB, ALICE_ELSEWHERE):
        with pytest.raises(errors.NotFound):
            await store.handoffs.get(owner, conversation_id)
    for missing in (new_id(), "bogus"):
        with pytest.raises(errors.NotFound):
            await store.handoffs.get(ALICE, missing)


async def test_hand_over_and_back(store: ConversationStore, clock: FakeClock) -> None:
    conversation_id = await conversation(store)
    handed = await store.handoffs.change(ALICE, conversation_id, HUMAN_BY_USER)
    assert handed.changed and handed.mode is HandoffMode.HUMAN
    assert handed.trigger is HandoffTrigger.USER and handed.reason == "billing"
    again = await store.handoffs.change(ALICE, conversation_id, HUMAN_BY_USER)
    assert not again.changed and again.request_time == handed.request_time
    assert (await store.handoffs.get(ALICE, conversation_id)).mode is HandoffMode.HUMAN
    clock.advance(seconds=5)
    released = await store.handoffs.change(
        ALICE,
        conversation_id,
        HandoffChange(HandoffMode.BOT, HandoffTrigger.OPERATOR, "operator-1"),
    )
    assert released.changed and released.mode is HandoffMode.BOT
    assert released.released_by == "operator-1" and released.release_time is not None
    assert not (await store.handoffs.change(ALICE, conversation_id, BOT_BY_USER)).changed
    with pytest.raises(errors.NotFound):
        await store.handoffs.change(BOB, conversation_id, HUMAN_BY_USER)


async def test_concurrent_requests_change_once(store: ConversationStore) -> None:
    conversation_id = await conversation(store)
    results = await asyncio.gather(
        *(store.handoffs.change(ALICE, conversation_id, HUMAN_BY_USER) for _ in range(5))
    )
    assert sum(state.changed for state in results) == 1


async def test_a_rule_fires_once(store: ConversationStore) -> None:
    conversation_id = await conversation(store)
    rule = HandoffChange(
        HandoffMode.HUMAN, HandoffTrigger.EXPLICIT_REQUEST, "alice", "asked", "explicit_request"
    )
    assert (await store.handoffs.change(ALICE, conversation_id, rule)).changed
    await store.handoffs.change(ALICE, conversation_id, BOT_BY_USER)
    state = await store.handoffs.change(ALICE, conversation_id, rule)
    assert not state.changed and state.mode is HandoffMode.BOT
    assert state.rules_fired == frozenset({"explicit_request"})
    # The user can still ask in person.
    assert (await store.handoffs.change(ALICE, conversation_id, HUMAN_BY_USER)).changed


async def test_waiting_list_is_per_tenant_and_oldest_first(
    store: ConversationStore, clock: FakeClock
) -> None:
    ids = []
    for owner in (ALICE, BOB, ALICE):
        conversation_id = await conversation(store, owner)
        await store.handoffs.change(owner, conversation_id, HUMAN_BY_USER)
        ids.append(conversation_id)
        clock.advance(seconds=1)
    elsewhere = await conversation(store, ALICE_ELSEWHERE)
    await store.handoffs.change(ALICE_ELSEWHERE, elsewhere, HUMAN_BY_USER)
    await store.handoffs.change(ALICE, ids[2], BOT_BY_USER)  # released: not waiting

    first = await store.handoffs.waiting("tenant-a", limit=1)
    assert [s.conversation_id for s in first.handoffs] == [ids[0]]
    assert first.next_cursor is not None
    second = await store.handoffs.waiting("tenant-a", limit=1, after=first.next_cursor)
    assert [(s.conversation_id, s.owner) for s in second.handoffs] == [(ids[1], BOB)]
    assert second.next_cursor is None  # the third was released
    only_b = await store.handoffs.waiting("tenant-b", limit=10)
    assert [s.conversation_id for s in only_b.handoffs] == [elsewhere]


async def test_operators_find_handed_off_conversations_of_their_tenant_only(
    store: ConversationStore,
) -> None:
    conversation_id = await conversation(store)
    with pytest.raises(errors.NotFound):  # never handed off
        await store.handoffs.of_tenant("tenant-a", conversation_id)
    await store.handoffs.change(ALICE, conversation_id, HUMAN_BY_USER)
    state = await store.handoffs.of_tenant("tenant-a", conversation_id)
    assert state.owner == ALICE and state.mode is HandoffMode.HUMAN
    for tenant, some_id in (("tenant-b", conversation_id), ("tenant-a", new_id())):
        with pytest.raises(errors.NotFound):
            await store.handoffs.of_tenant(tenant, some_id)


async def test_thumbs_down_are_counted_per_conversation(
    store: ConversationStore, make_message: MessageFactory
) -> None:
    conversation_id = await conversation(store)
    other = await conversation(store)
    answers = [make_message(ALICE, conversation_id, role=Role.ASSISTANT) for _ in range(3)]
    elsewhere = make_message(ALICE, other, role=Role.ASSISTANT)
    await store.write_messages([*answers, elsewhere])
    for answer in answers[:2]:
        await store.submit_feedback(ALICE, Feedback(answer.message_id, Rating.THUMBS_DOWN))
    await store.submit_feedback(ALICE, Feedback(answers[2].message_id, Rating.THUMBS_UP))
    await store.submit_feedback(ALICE, Feedback(elsewhere.message_id, Rating.THUMBS_DOWN))
    assert await store.handoffs.count_thumbs_down(ALICE, answers[2].message_id) == (
        conversation_id,
        2,
    )
    with pytest.raises(errors.NotFound):
        await store.handoffs.count_thumbs_down(BOB, answers[0].message_id)


async def test_operator_replies_keep_their_author(
    store: ConversationStore, make_message: MessageFactory
) -> None:
    conversation_id = await conversation(store)
    reply = make_message(ALICE, conversation_id, role=Role.ASSISTANT, operator_id="sam")
    await store.write_messages([reply])
    history = await store.get_conversation(ALICE, conversation_id, limit=10)
    assert [(m.message_id, m.operator_id) for m in history.messages] == [(reply.message_id, "sam")]


async def test_deleting_a_conversation_removes_its_handoff(store: ConversationStore) -> None:
    conversation_id = await conversation(store)
    await store.handoffs.change(ALICE, conversation_id, HUMAN_BY_USER)
    await store.delete_conversation(ALICE, conversation_id)
    assert (await store.handoffs.waiting("tenant-a", limit=10)).handoffs == ()

"""Contract tests of feedback datasets' source (docs/datasets.md) on every ConversationStore:
`list_rated_answers` pages complete, rated answers of the tenants asked for, by time and
rating, and RatedAnswerExport adds each answer's branch (not its regenerated sibling), masks
a redacting tenant and refuses a tenant that did not opt in."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chatplane.common.ids import new_id
from chatplane.persistence.rated_answer_export import NotOptedIn, RatedAnswerExport
from chatplane.persistence.store.answer_metrics import RatedAnswerQuery
from chatplane.persistence.store.base import (
    ConversationStore,
    Feedback,
    Message,
    MessageStatus,
    Owner,
    Rating,
    Role,
)
from chatplane.privacy.policy import RedactionPolicy
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
BOB = Owner("tenant-b", "bob")
CAROL = Owner("tenant-c", "carol")


async def _pair(
    store: ConversationStore,
    make_message: MessageFactory,
    clock: FakeClock,
    owner: Owner,
    question: str,
    answer: str,
    *,
    status: MessageStatus = MessageStatus.COMPLETE,
    days_ago: int = 0,
) -> Message:
    conversation_id = new_id()
    when = clock.now - timedelta(days=days_ago)
    q = make_message(owner, conversation_id, text=question, create_time=when, parent_message_id="")
    a = make_message(
        owner,
        conversation_id,
        role=Role.ASSISTANT,
        text=answer,
        status=status,
        variant="v@1",
        reply_to_message_id=q.message_id,
        parent_message_id=q.message_id,
        create_time=when + timedelta(milliseconds=1),
    )
    assert await store.write_messages([q, a]) == 2
    return a


def _query(clock: FakeClock, tenants: tuple[str, ...], **fields: object) -> RatedAnswerQuery:
    values: dict[str, object] = {
        "tenants": tenants,
        "since": clock.now - timedelta(days=1),
        "until": None,
        "min_rating": 1,
        "limit": 100,
    }
    values.update(fields)
    return RatedAnswerQuery(**values)  # type: ignore[arg-type]


async def test_rated_answers_are_filtered_paged_and_exported_with_their_branch(
    store: ConversationStore, make_message: MessageFactory, clock: FakeClock
) -> None:
    # Alice: question, answer, follow-up, an answer and its regeneration (the one rated).
    conversation_id = new_id()
    t0 = clock.now - timedelta(hours=1)

    def message(role: Role, text: str, parent: str, minutes: int, **fields: object) -> Message:
        return make_message(
            ALICE,
            conversation_id,
            role=role,
            text=text,
            parent_message_id=parent,
            create_time=t0 + timedelta(minutes=minutes),
            **fields,
        )

    q1 = message(Role.USER, "I am ann@example.com, help", "", 0)
    a1 = message(Role.ASSISTANT, "Sure, Ann.", q1.message_id, 1, reply_to_message_id=q1.message_id)
    q2 = message(Role.USER, "Which plan?", a1.message_id, 2)
    a2 = message(Role.ASSISTANT, "The first.", q2.message_id, 3, reply_to_message_id=q2.message_id)
    a2b = message(
        Role.ASSISTANT,
        "Pro, mail pro@example.com",
        q2.message_id,
        4,
        variant="new@2",
        reply_to_message_id=q2.message_id,
    )
    assert await store.write_messages([q1, a1, q2, a2, a2b]) == 5
    await store.submit_feedback(ALICE, Feedback(a1.message_id, Rating.THUMBS_UP))  # rating 5
    await store.submit_feedback(ALICE, Feedback(a2b.message_id, Rating.THUMBS_DOWN, "", 4))
    bob = await _pair(store, make_message, clock, BOB, "bob asks", "bob answer")
    await store.submit_feedback(BOB, Feedback(bob.message_id, Rating.THUMBS_DOWN))  # rating 1
    carol = await _pair(store, make_message, clock, CAROL, "carol secret", "carol answer")
    await store.submit_feedback(CAROL, Feedback(carol.message_id, Rating.THUMBS_UP, "", 5))
    cut = await _pair(store, make_message, clock, BOB, "q", "cut", status=MessageStatus.INTERRUPTED)
    await store.submit_feedback(BOB, Feedback(cut.message_id, Rating.THUMBS_UP, "", 5))
    old = await _pair(store, make_message, clock, BOB, "q", "old", days_ago=10)
    await store.submit_feedback(BOB, Feedback(old.message_id, Rating.THUMBS_UP, "", 5))

    both = ("tenant-a", "tenant-b")
    rows = await store.analytics.rated_answers(_query(clock, both))
    # Complete answers only, in the range, oldest first; Carol's tenant was not asked for.
    assert [r.message_id for r in rows] == [a1.message_id, a2b.message_id, bob.message_id]
    assert [(r.rating, r.score, r.thumbs_up) for r in rows] == [
        (5, None, True),
        (4, 4, False),
        (1, None, False),
    ]
    assert rows[1].variant == "new@2"
    high = await store.analytics.rated_answers(_query(clock, both, min_rating=4))
    assert [r.message_id for r in high] == [a1.message_id, a2b.message_id]
    until = await store.analytics.rated_answers(
        _query(clock, both, until=t0 + timedelta(minutes=2))
    )
    assert [r.message_id for r in until] == [a1.message_id]
    # Keyset pages: one at a time, each after the previous one's last answer.
    seen = []
    after = None
    while page := await store.analytics.rated_answers(_query(clock, both, limit=1, after=after)):
        seen.append(page[0].message_id)
        after = (page[0].create_time, page[0].message_id)
    assert seen == [r.message_id for r in rows]
    assert await store.analytics.rated_answers(_query(clock, ())) == []

    export = RatedAnswerExport(store, frozenset(both), RedactionPolicy(frozenset({"tenant-a"})))
    assert export.tenants("") == both
    with pytest.raises(NotOptedIn):
        export.tenants("tenant-c")
    first = await export.page(_query(clock, both, limit=1))
    assert first.next_after == (rows[0].create_time, rows[0].message_id)
    assert (await export.page(_query(clock, both, limit=3))).next_after is not None
    assert (await export.page(_query(clock, both, limit=4))).next_after is None
    exported = (await export.page(_query(clock, export.tenants("tenant-a"), min_rating=4))).answers
    rated = exported[1]
    assert rated.redacted
    # The branch to the regenerated answer, not its sibling; emails masked.
    assert [(b.role, b.text) for b in rated.branch] == [
        (Role.USER, "I am [EMAIL], help"),
        (Role.ASSISTANT, "Sure, Ann."),
        (Role.USER, "Which plan?"),
        (Role.ASSISTANT, "Pro, mail [EMAIL]"),
    ]
    [unmasked] = (await export.page(_query(clock, ("tenant-b",)))).answers
    assert not unmasked.redacted
    assert [b.text for b in unmasked.branch] == ["bob asks", "bob answer"]

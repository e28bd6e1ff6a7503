"""The store's read for an export (`user_message_facts`, docs/privacy.md "Export") on both
engines: one owner's answer facts and feedback, keyset-paged in message id order, nothing of
another user or tenant, never a message's text."""

from __future__ import annotations

from datetime import timedelta

from chatplane.common.ids import new_id
from chatplane.persistence.store.base import (
    ConversationStore,
    Feedback,
    Owner,
    Rating,
    Role,
    TurnRequest,
)
from tests.contract.store_fixtures import (  # noqa: F401 (fixtures are found by name)
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


async def _conversation(store: ConversationStore, owner: Owner) -> str:
    request = TurnRequest(
        owner=owner,
        conversation_id="",
        client_message_id="",
        user_message_id=new_id(),
        assistant_message_id=new_id(),
        title="A chat",
        lease=timedelta(seconds=30),
    )
    return (await store.begin_turn(request)).conversation_id


async def test_facts_of_one_owner_paged_in_message_id_order(
    store: ConversationStore, make_message: MessageFactory
) -> None:
    answers = []
    for owner in (ALICE, BOB, ALICE_ELSEWHERE):
        conversation_id = await _conversation(store, owner)
        for _ in range(3):
            question = make_message(owner, conversation_id)
            answer = make_message(
                owner,
                conversation_id,
                role=Role.ASSISTANT,
                variant="B",
                first_token_ms=120,
                duration_ms=900,
            )
            await store.write_messages([question, answer])
            if owner == ALICE:
                answers.append(answer)
        # Every owner rates their last answer; only Alice's rating may come back.
        await store.submit_feedback(owner, Feedback(answer.message_id, Rating.THUMBS_DOWN, "no", 2))

    pages, after = [], None
    while True:
        page = await store.user_message_facts(ALICE, limit=2, after=after)
        pages.append(page)
        if len(page) < 2:
            break
        after = page[-1].message_id
    facts = [f for page in pages for f in page]
    assert [f.message_id for f in facts] == sorted(a.message_id for a in answers)
    assert all((f.variant, f.first_token_ms, f.duration_ms) == ("B", 120, 900) for f in facts)
    rated = [f for f in facts if f.feedback is not None]
    assert [f.message_id for f in rated] == [answers[-1].message_id]
    assert rated[0].feedback == Feedback(answers[-1].message_id, Rating.THUMBS_DOWN, "no", 2)
    assert rated[0].feedback_time is not None
    assert not any(hasattr(f, "text") for f in facts)
    assert await store.user_message_facts(Owner("tenant-a", "nobody"), limit=10) == []

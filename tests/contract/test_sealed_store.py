"""The data-key table and the sealed store on every engine (chatplane.crypto): wrapped keys are
created once per user and deleted by crypto-shredding; personal text is stored sealed (the
raw rows hold no plaintext) and read back opened, or as ERASED_TEXT once the key is gone."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

from chatplane.common.ids import new_id
from chatplane.crypto.envelope import is_sealed
from chatplane.crypto.kek import new_kek_line, parse_keks
from chatplane.crypto.keyring import ERASED_TEXT, Keyring, StoreKeySource, WrappedDataKey
from chatplane.crypto.sealed_store import sealed_store
from chatplane.persistence.rated_answer_export import RatedAnswerExport
from chatplane.persistence.store.answer_metrics import RatedAnswerQuery
from chatplane.persistence.store.base import (
    ConversationStore,
    Feedback,
    Owner,
    Rating,
    Role,
    TurnRequest,
    TurnReservation,
)
from chatplane.persistence.store.handoff import HandoffChange, HandoffMode, HandoffTrigger
from chatplane.privacy.policy import RedactionPolicy
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

ALICE = Owner("tenant-a", "alice")
BOB = Owner("tenant-a", "bob")
CANARY = "CANARYd41d8cd98f00b204e9800998ecf8427e"


def _keyring(store: ConversationStore) -> Keyring:
    keks = parse_keks(new_kek_line("contract"), "contract")
    return Keyring(StoreKeySource(store.data_keys, keks), keks, 5.0)


async def test_a_users_data_key_is_created_once_and_destroyed_once(
    store: ConversationStore,
) -> None:
    keys = store.data_keys
    assert await keys.get_data_key("t", "alice") is None
    first = WrappedDataKey("t", "alice", "k1", "kek", b"\x01" * 60)
    second = WrappedDataKey("t", "alice", "k2", "kek", b"\x02" * 60)
    # Concurrent creators: exactly one key is stored and every creator gets that one.
    stored = await asyncio.gather(
        keys.add_data_key(first),
        keys.add_data_key(second),
    )
    assert stored[0] == stored[1] and stored[0] in (first, second)
    assert await keys.get_data_key("t", "alice") == stored[0]
    rewrapped = WrappedDataKey("t", "alice", stored[0].key_id, "kek-2", b"\x03" * 60)
    await keys.rewrap_data_key(rewrapped)
    # A re-wrap of a key that is not (any more) the user's changes nothing.
    await keys.rewrap_data_key(WrappedDataKey("t", "alice", "gone", "kek-3", b"\x04" * 60))
    assert await keys.get_data_key("t", "alice") == rewrapped
    assert await keys.get_data_key("t", "bob") is None
    assert await keys.delete_data_key("t", "alice") is True
    assert await keys.delete_data_key("t", "alice") is False
    assert await keys.get_data_key("t", "alice") is None


async def _begin_canary_turn(sealed: ConversationStore) -> TurnReservation:
    """Alice's new conversation, titled with the canary, through the sealed store."""
    return await sealed.begin_turn(
        TurnRequest(
            owner=ALICE,
            conversation_id="",
            client_message_id="",
            user_message_id=new_id(),
            assistant_message_id=new_id(),
            title=f"title {CANARY}",
            lease=timedelta(seconds=30),
        )
    )


async def test_text_is_stored_sealed_read_opened_and_erased_with_its_key(
    store: ConversationStore, store_target: StoreTarget, make_message: MessageFactory
) -> None:
    keyring = _keyring(store)
    sealed = sealed_store(store, keyring)
    reservation = await _begin_canary_turn(sealed)
    conversation = reservation.conversation_id
    question = make_message(
        ALICE, conversation, message_id=reservation.user_message_id, text=f"ask {CANARY}"
    )
    answer = make_message(
        ALICE,
        conversation,
        message_id=reservation.assistant_message_id,
        role=Role.ASSISTANT,
        text=f"answer {CANARY}",
        reply_to_message_id=question.message_id,
        delta_ends=(7, len(f"answer {CANARY}")),
    )
    other = make_message(BOB, new_id(), text=f"bob {CANARY}")
    # Text sealed by the Agent arrives as it is; text from an older record arrives in clear.
    presealed = await keyring.seal(
        ALICE.tenant_id, ALICE.user_id, question.message_id, question.text
    )
    from_log = dataclasses.replace(question, text=presealed)
    assert await sealed.write_messages([from_log, answer, other]) == 3
    await sealed.submit_feedback(ALICE, Feedback(answer.message_id, Rating.THUMBS_UP, CANARY))

    human = HandoffChange(HandoffMode.HUMAN, HandoffTrigger.USER, "alice", f"why {CANARY}")
    assert (await sealed.handoffs.change(ALICE, conversation, human)).reason == f"why {CANARY}"

    # The raw rows hold no plaintext; reads open it.
    for query in (
        "SELECT reason FROM handoffs",
        "SELECT text FROM messages",
        "SELECT title FROM conversations",
        "SELECT comment FROM feedback",
    ):
        values = [row[0] for row in store_target.rows(query)]
        assert values and all(is_sealed(v) and CANARY not in v for v in values), query
    history = await sealed.get_conversation(ALICE, conversation, limit=10)
    waiting = await sealed.handoffs.waiting(ALICE.tenant_id, limit=5)
    assert [h.reason for h in waiting.handoffs] == [f"why {CANARY}"]
    operator_view = await sealed.handoffs.of_tenant(ALICE.tenant_id, conversation)
    assert operator_view.reason == f"why {CANARY}"
    assert [m.text for m in history.messages] == [f"ask {CANARY}", f"answer {CANARY}"]
    assert history.conversation.title == f"title {CANARY}"
    stored_answer = await sealed.get_answer(ALICE, answer.message_id)
    assert stored_answer.delta_ends == (7, len(f"answer {CANARY}"))
    assert sorted(m.text for m in await sealed.iter_messages(None, 10)) == [
        f"answer {CANARY}",
        f"ask {CANARY}",
        f"bob {CANARY}",
    ]

    # Crypto-shredding: alice's text is gone everywhere it is read; bob's is not.
    assert await keyring.destroy_user_key(ALICE.tenant_id, ALICE.user_id)
    erased = await sealed.get_conversation(ALICE, conversation, limit=10)
    assert [m.text for m in erased.messages] == [ERASED_TEXT, ERASED_TEXT]
    assert erased.conversation.title == ERASED_TEXT
    assert (await sealed.get_answer(ALICE, answer.message_id)).delta_ends == ()
    page = await sealed.list_conversations(ALICE, limit=5)
    assert [c.title for c in page.conversations] == [ERASED_TEXT]
    assert (await sealed.handoffs.get(ALICE, conversation)).reason == ERASED_TEXT
    bob_history = await sealed.get_conversation(BOB, other.conversation_id, limit=10)
    assert bob_history.messages[0].text == f"bob {CANARY}"


async def test_the_dataset_export_reads_its_branch_and_title_opened(
    store: ConversationStore,
    store_target: StoreTarget,
    make_message: MessageFactory,
    clock: FakeClock,
) -> None:
    # tree_skeleton was once forwarded as it was: its conversation's title came back sealed.
    sealed = sealed_store(store, _keyring(store))
    reservation = await _begin_canary_turn(sealed)
    conversation = reservation.conversation_id
    question = make_message(
        ALICE,
        conversation,
        message_id=reservation.user_message_id,
        text=f"ask {CANARY}",
        parent_message_id="",
    )
    answer = make_message(
        ALICE,
        conversation,
        message_id=reservation.assistant_message_id,
        role=Role.ASSISTANT,
        text=f"answer {CANARY}",
        variant="v@1",
        reply_to_message_id=question.message_id,
        parent_message_id=question.message_id,
    )
    assert await sealed.write_messages([question, answer]) == 2
    await sealed.submit_feedback(ALICE, Feedback(answer.message_id, Rating.THUMBS_UP))
    for query in ("SELECT title FROM conversations", "SELECT text FROM messages"):
        values = [row[0] for row in store_target.rows(query)]
        assert values and all(is_sealed(v) and CANARY not in v for v in values), query

    inner = await store.trees.skeleton(ALICE, conversation)
    assert is_sealed(inner.conversation.title)
    skeleton = await sealed.trees.skeleton(ALICE, conversation)
    assert skeleton.conversation.title == f"title {CANARY}"
    assert skeleton.tree().path(answer.message_id) == [question.message_id, answer.message_id]

    export = RatedAnswerExport(sealed, frozenset({ALICE.tenant_id}), RedactionPolicy())
    page = await export.page(
        RatedAnswerQuery(
            tenants=(ALICE.tenant_id,),
            since=clock.now - timedelta(days=1),
            until=None,
            min_rating=1,
            limit=10,
        )
    )
    assert [[b.text for b in a.branch] for a in page.answers] == [
        [f"ask {CANARY}", f"answer {CANARY}"]
    ]


async def test_concurrent_creators_of_many_users_keys_all_get_the_stored_key(
    store: ConversationStore,
) -> None:
    # Each user's first sealed text may be written by several replicas at once: every
    # creator gets the one stored key, never an error (PostgreSQL: the INSERT that lost the
    # race does not see the winner's row in its own statement's snapshot).
    keys = store.data_keys
    for user in range(30):
        candidates = [
            WrappedDataKey("race", f"user-{user}", f"k{n}", "kek", bytes([n]) * 60)
            for n in range(4)
        ]
        stored = await asyncio.gather(*(keys.add_data_key(k) for k in candidates))
        assert len(set(stored)) == 1 and stored[0] in candidates
        assert await keys.get_data_key("race", f"user-{user}") == stored[0]

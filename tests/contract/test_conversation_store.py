"""Contract tests of the system of record, the ConversationStore on PostgreSQL. Turns and their
idempotency, owner scoping, keyset paging, deletion, feedback, API keys, idempotent batch
writes, the full scan for rebuilds, concurrency between stores on one database, and the log
consumer on top."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from chatplane.common import errors
from chatplane.common.errors import ConfigError
from chatplane.common.ids import new_id
from chatplane.common.settings import Profile, Settings
from chatplane.common.topics import MESSAGES_DLQ_TOPIC, MESSAGES_TOPIC
from chatplane.internal.v1 import events_pb2
from chatplane.log import LogRecord, PostgresMessageLog
from chatplane.log.batch_consumer import DEAD_LETTER_REASON_HEADER
from chatplane.log.postgres import SCHEMA as LOG_SCHEMA
from chatplane.persistence.consumer import CONSUMER_GROUP, BatchConsumer
from chatplane.persistence.store.base import (
    Conversation,
    ConversationStore,
    Feedback,
    FinishReason,
    Message,
    MessagesRejected,
    Owner,
    Rating,
    Role,
    TurnRequest,
)
from chatplane.persistence.store.database import LOCK_CLASS_CONVERSATION, lock_key
from chatplane.persistence.store.factory import open_store
from chatplane.persistence.store.postgres import PostgresConversationStore
from chatplane.v1 import resources_pb2
from tests.contract.store_fixtures import (  # noqa: F401 (fixtures are found by name)
    FakeClock,
    MessageFactory,
    PostgresTarget,
    StoreTarget,
    clock_fixture,
    make_message_fixture,
    module_database_fixture,
    postgres_dsn_fixture,
    recorded,
    store_fixture,
    store_target_fixture,
)

ALICE = Owner("tenant-a", "alice")
BOB = Owner("tenant-a", "bob")
# The same user id as ALICE in another tenant: must see nothing of ALICE's.
ALICE_ELSEWHERE = Owner("tenant-b", "alice")
STRANGERS = (BOB, ALICE_ELSEWHERE)
LEASE = timedelta(seconds=30)


def turn_request(
    owner: Owner = ALICE, *, conversation_id: str = "", key: str = "", title: str = "A chat"
) -> TurnRequest:
    return TurnRequest(
        owner=owner,
        conversation_id=conversation_id,
        client_message_id=key,
        user_message_id=new_id(),
        assistant_message_id=new_id(),
        title=title,
        lease=LEASE,
    )


# --- schema and lifecycle -----------------------------------------------------------------


async def test_schema_is_migrated_once(
    store: ConversationStore, store_target: StoreTarget, clock: FakeClock
) -> None:
    await store.close()
    reopened = await store_target.open(clock)
    await reopened.close()
    versions = store_target.rows("SELECT version, name FROM schema_version ORDER BY version")
    assert versions == store_target.schema_versions()


async def test_stores_started_at_once_migrate_once(
    store_target: StoreTarget, clock: FakeClock
) -> None:
    # Replicas of the Persistence service starting together on an empty database.
    stores = await asyncio.gather(*(store_target.open(clock) for _ in range(4)))
    try:
        reservations = await asyncio.gather(*(s.begin_turn(turn_request()) for s in stores))
        assert all(r.acquired for r in reservations)
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    versions = store_target.rows("SELECT version, name FROM schema_version ORDER BY version")
    assert versions == store_target.schema_versions()


async def test_closed_store_is_unavailable(store: ConversationStore) -> None:
    await store.close()
    with pytest.raises(errors.Unavailable):
        await store.list_conversations(ALICE, limit=10)


# --- turns -------------------------------------------------------------------------------


async def test_begin_turn_creates_a_conversation(store: ConversationStore) -> None:
    request = turn_request(key="k1", title="Trip to Lisbon")
    reservation = await store.begin_turn(request)
    assert reservation.acquired and not reservation.complete
    assert (reservation.user_message_id, reservation.assistant_message_id) == (
        request.user_message_id,
        request.assistant_message_id,
    )
    page = await store.list_conversations(ALICE, limit=10)
    assert [(c.conversation_id, c.title, c.message_count) for c in page.conversations] == [
        (reservation.conversation_id, "Trip to Lisbon", 0)
    ]


async def test_begin_turn_is_idempotent_per_client_message_id(
    store: ConversationStore, make_message: MessageFactory
) -> None:
    first = await store.begin_turn(turn_request(key="k1"))
    # A retry: new ids chosen by the gateway, no conversation named (it was new).
    again = await store.begin_turn(turn_request(key="k1"))
    assert (again.conversation_id, again.user_message_id, again.assistant_message_id) == (
        first.conversation_id,
        first.user_message_id,
        first.assistant_message_id,
    )
    assert not again.acquired and not again.complete
    assert len((await store.list_conversations(ALICE, limit=10)).conversations) == 1

    await store.write_messages(
        [
            make_message(ALICE, first.conversation_id, message_id=first.user_message_id),
            make_message(
                ALICE,
                first.conversation_id,
                message_id=first.assistant_message_id,
                role=Role.ASSISTANT,
            ),
        ]
    )
    done = await store.begin_turn(turn_request(key="k1"))
    assert not done.acquired and done.complete
    assert done.user_message_id == first.user_message_id


async def test_idempotency_keys_are_per_owner(store: ConversationStore) -> None:
    mine = await store.begin_turn(turn_request(ALICE, key="same"))
    for stranger in STRANGERS:
        theirs = await store.begin_turn(turn_request(stranger, key="same"))
        assert theirs.acquired
        assert theirs.conversation_id != mine.conversation_id


async def test_turns_without_key_are_independent(store: ConversationStore) -> None:
    one = await store.begin_turn(turn_request())
    two = await store.begin_turn(turn_request(conversation_id=one.conversation_id))
    assert one.acquired and two.acquired
    assert two.conversation_id == one.conversation_id
    assert two.user_message_id != one.user_message_id


async def test_concurrent_begin_turns_have_exactly_one_owner(
    store: ConversationStore, store_target: StoreTarget, clock: FakeClock
) -> None:
    # A second store on the same database stands for a second process: its own
    # connection(s), contending for the same key.
    other = await store_target.open(clock)
    try:
        calls = [(store if i % 2 else other).begin_turn(turn_request(key="k")) for i in range(20)]
        reservations = await asyncio.gather(*calls)
    finally:
        await other.close()
    assert sum(r.acquired for r in reservations) == 1
    assert len({(r.conversation_id, r.user_message_id) for r in reservations}) == 1
    assert store_target.rows("SELECT count(*) FROM conversations") == [(1,)]


async def test_expired_lease_is_taken_over_once(
    store: ConversationStore, clock: FakeClock, make_message: MessageFactory
) -> None:
    first = await store.begin_turn(turn_request(key="k"))
    clock.advance(seconds=29)
    assert not (await store.begin_turn(turn_request(key="k"))).acquired

    clock.advance(seconds=1)
    takeover = await store.begin_turn(turn_request(key="k"))
    assert takeover.acquired and not takeover.complete
    assert takeover.assistant_message_id == first.assistant_message_id
    assert takeover.lease_expire_time == clock.now + LEASE
    # The new owner holds a fresh lease: the next retry waits again.
    assert not (await store.begin_turn(turn_request(key="k"))).acquired

    # Once the answer is stored, an expired lease no longer hands the turn out.
    await store.write_messages(
        [
            make_message(
                ALICE,
                first.conversation_id,
                message_id=first.assistant_message_id,
                role=Role.ASSISTANT,
            )
        ]
    )
    clock.advance(minutes=5)
    replay = await store.begin_turn(turn_request(key="k"))
    assert replay.complete and not replay.acquired


async def test_concurrent_takeovers_of_an_expired_lease_have_one_winner(
    store: ConversationStore, store_target: StoreTarget, clock: FakeClock
) -> None:
    await store.begin_turn(turn_request(key="k"))
    clock.advance(minutes=1)
    other = await store_target.open(clock)
    try:
        calls = [(store if i % 2 else other).begin_turn(turn_request(key="k")) for i in range(10)]
        reservations = await asyncio.gather(*calls)
    finally:
        await other.close()
    assert sum(r.acquired for r in reservations) == 1


async def test_released_turn_is_acquired_by_the_next_retry_at_once(
    store: ConversationStore, make_message: MessageFactory
) -> None:
    first = await store.begin_turn(turn_request(key="k"))
    assert not (await store.begin_turn(turn_request(key="k"))).acquired
    with pytest.raises(errors.NotFound):
        await store.release_turn(BOB, first.user_message_id)
    assert await store.release_turn(ALICE, first.user_message_id)
    retry = await store.begin_turn(turn_request(key="k"))
    assert retry.acquired and retry.assistant_message_id == first.assistant_message_id
    # A turn whose answer is stored is never released.
    await store.write_messages(
        [
            make_message(
                ALICE,
                first.conversation_id,
                message_id=first.assistant_message_id,
                role=Role.ASSISTANT,
            )
        ]
    )
    assert not await store.release_turn(ALICE, first.user_message_id)
    assert (await store.begin_turn(turn_request(key="k"))).complete


async def test_begin_turn_in_someone_elses_conversation_is_not_found(
    store: ConversationStore,
) -> None:
    mine = await store.begin_turn(turn_request())
    for stranger in STRANGERS:
        with pytest.raises(errors.NotFound):
            await store.begin_turn(turn_request(stranger, conversation_id=mine.conversation_id))
    for bad in (new_id(), "not-a-uuid", mine.conversation_id.upper()):
        with pytest.raises(errors.NotFound):
            await store.begin_turn(turn_request(conversation_id=bad))


async def test_reused_message_ids_are_refused(store: ConversationStore) -> None:
    request = turn_request()
    await store.begin_turn(request)
    with pytest.raises(errors.AlreadyExists):
        await store.begin_turn(request)
    # The refused call created nothing: its would-be conversation went with it.
    assert len((await store.list_conversations(ALICE, limit=10)).conversations) == 1


async def test_get_turn_returns_messages_once_stored(
    store: ConversationStore, make_message: MessageFactory
) -> None:
    reservation = await store.begin_turn(turn_request(key="k"))
    turn = await store.get_turn(ALICE, reservation.user_message_id)
    assert turn.user_message is None and turn.assistant_message is None
    assert turn.lease_expire_time == reservation.lease_expire_time

    answer = make_message(
        ALICE,
        reservation.conversation_id,
        message_id=reservation.assistant_message_id,
        role=Role.ASSISTANT,
        text="Sure.",
        model="offline",
        finish_reason=FinishReason.STOP,
        reply_to_message_id=reservation.user_message_id,
        input_tokens=12,
        output_tokens=3,
    )
    question = make_message(
        ALICE, reservation.conversation_id, message_id=reservation.user_message_id
    )
    await store.write_messages([question, answer])
    turn = await store.get_turn(ALICE, reservation.user_message_id)
    assert turn.user_message == question
    assert turn.assistant_message == answer

    for stranger in STRANGERS:
        with pytest.raises(errors.NotFound):
            await store.get_turn(stranger, reservation.user_message_id)
    for bad in (new_id(), "nope"):
        with pytest.raises(errors.NotFound):
            await store.get_turn(ALICE, bad)


async def test_get_answer_finds_the_turn_and_the_delta_ends_of_its_answer(
    store: ConversationStore, make_message: MessageFactory
) -> None:
    # ResumeChat: the turn by its assistant message id, the owner's only.
    reservation = await store.begin_turn(turn_request())
    pending = await store.get_answer(ALICE, reservation.assistant_message_id)
    assert pending.turn.user_message_id == reservation.user_message_id
    assert pending.turn.conversation_id == reservation.conversation_id
    assert pending.turn.assistant_message is None and pending.delta_ends == ()

    answer = make_message(
        ALICE,
        reservation.conversation_id,
        message_id=reservation.assistant_message_id,
        role=Role.ASSISTANT,
        text="Sure, here.",
        reply_to_message_id=reservation.user_message_id,
        delta_ends=(4, 10, 11),
    )
    question = make_message(
        ALICE, reservation.conversation_id, message_id=reservation.user_message_id
    )
    await store.write_messages([question, answer])
    await store.write_messages([answer])  # re-delivered: stored once
    stored = await store.get_answer(ALICE, reservation.assistant_message_id)
    assert stored.delta_ends == (4, 10, 11)
    assert stored.turn.assistant_message is not None
    assert stored.turn.assistant_message.text == "Sure, here."

    # An answer recorded without its delta ends (an older record) has none.
    other = await store.begin_turn(turn_request())
    await store.write_messages(
        [
            make_message(ALICE, other.conversation_id, message_id=other.user_message_id),
            make_message(
                ALICE,
                other.conversation_id,
                message_id=other.assistant_message_id,
                role=Role.ASSISTANT,
                reply_to_message_id=other.user_message_id,
            ),
        ]
    )
    assert (await store.get_answer(ALICE, other.assistant_message_id)).delta_ends == ()

    for stranger in STRANGERS:
        with pytest.raises(errors.NotFound):
            await store.get_answer(stranger, reservation.assistant_message_id)
    for bad in (reservation.user_message_id, new_id(), "nope"):
        with pytest.raises(errors.NotFound):
            await store.get_answer(ALICE, bad)

    await store.delete_conversation(ALICE, reservation.conversation_id)
    with pytest.raises(errors.NotFound):
        await store.get_answer(ALICE, reservation.assistant_message_id)


# --- owner scoping and paging -------------------------------------------------------------


async def test_conversations_are_visible_to_their_owner_only(
    store: ConversationStore, make_message: MessageFactory
) -> None:
    mine = await store.begin_turn(turn_request())
    await store.write_messages([make_message(ALICE, mine.conversation_id)])
    for stranger in STRANGERS:
        assert (await store.list_conversations(stranger, limit=10)).conversations == ()
        with pytest.raises(errors.NotFound):
            await store.get_conversation(stranger, mine.conversation_id, limit=10)
        with pytest.raises(errors.NotFound):
            await store.delete_conversation(stranger, mine.conversation_id)
    history = await store.get_conversation(ALICE, mine.conversation_id, limit=10)
    assert len(history.messages) == 1
    with pytest.raises(errors.NotFound):
        await store.get_conversation(ALICE, "../etc/passwd", limit=10)


async def test_empty_conversation_has_no_messages(store: ConversationStore) -> None:
    reservation = await store.begin_turn(turn_request(title="Nothing yet"))
    history = await store.get_conversation(ALICE, reservation.conversation_id, limit=5)
    assert history.conversation.title == "Nothing yet"
    assert history.messages == () and history.next_cursor is None


async def test_conversation_pages_are_keyset_ordered(
    store: ConversationStore, clock: FakeClock, make_message: MessageFactory
) -> None:
    expected = []
    for i in range(8):
        reservation = await store.begin_turn(turn_request(title=f"chat {i}"))
        expected.append(reservation.conversation_id)
        # Pairs share an update time, so the id must break ties consistently.
        if i % 2:
            clock.advance(seconds=1)
    # A message makes the oldest conversation the most recently updated one.
    clock.advance(seconds=10)
    await store.write_messages([make_message(ALICE, expected[0])])
    await store.begin_turn(turn_request(BOB))

    seen: list[Conversation] = []
    pages: list[int] = []
    after = None
    while True:
        page = await store.list_conversations(ALICE, limit=3, after=after)
        pages.append(len(page.conversations))
        seen += page.conversations
        if page.next_cursor is None:
            break
        after = page.next_cursor
    assert pages == [3, 3, 2]
    keys = [(c.update_time, c.conversation_id) for c in seen]
    assert keys == sorted(keys, reverse=True)
    assert seen[0].conversation_id == expected[0]
    assert sorted(c.conversation_id for c in seen) == sorted(expected)


async def test_message_pages_are_oldest_first(
    store: ConversationStore, clock: FakeClock, make_message: MessageFactory
) -> None:
    conversation_id = (await store.begin_turn(turn_request())).conversation_id
    created = []
    for i in range(11):
        # Three messages at each time: insertion order breaks the ties.
        if i % 3 == 0:
            clock.advance(seconds=1)
        created.append(make_message(ALICE, conversation_id, text=f"m{i}"))
    # Stored out of order: the newest first, and one tie group (m3 | m4, m5) split across
    # the two batches, so that the tie is broken by insertion order, not by the id.
    inserted = created[4:] + created[:4]
    await store.write_messages(inserted[:7])
    await store.write_messages(inserted[7:])
    expected = sorted(created, key=lambda m: (m.create_time, inserted.index(m)))
    assert [m.text for m in expected][3:6] == ["m4", "m5", "m3"]

    seen: list[Message] = []
    pages: list[int] = []
    after = None
    while True:
        history = await store.get_conversation(ALICE, conversation_id, limit=4, after=after)
        pages.append(len(history.messages))
        seen += history.messages
        if history.next_cursor is None:
            break
        after = history.next_cursor
    assert pages == [4, 4, 3]
    assert [m.text for m in seen] == [m.text for m in expected]
    assert history.conversation.message_count == 11


async def test_a_cursor_of_another_conversation_is_refused(
    store: ConversationStore, make_message: MessageFactory
) -> None:
    one = (await store.begin_turn(turn_request())).conversation_id
    two = (await store.begin_turn(turn_request())).conversation_id
    await store.write_messages([make_message(ALICE, one) for _ in range(3)])
    cursor = (await store.get_conversation(ALICE, one, limit=1)).next_cursor
    assert cursor is not None
    with pytest.raises(ValueError):
        await store.get_conversation(ALICE, two, limit=1, after=cursor)


# --- deletion -----------------------------------------------------------------------------


async def test_delete_removes_everything_and_never_resurrects(
    store: ConversationStore, store_target: StoreTarget, make_message: MessageFactory
) -> None:
    reservation = await store.begin_turn(turn_request(key="k"))
    conversation_id = reservation.conversation_id
    answer = make_message(
        ALICE, conversation_id, message_id=reservation.assistant_message_id, role=Role.ASSISTANT
    )
    await store.write_messages(
        [make_message(ALICE, conversation_id, message_id=reservation.user_message_id), answer]
    )
    await store.submit_feedback(ALICE, Feedback(answer.message_id, Rating.THUMBS_UP))

    await store.delete_conversation(ALICE, conversation_id)

    with pytest.raises(errors.NotFound):
        await store.get_conversation(ALICE, conversation_id, limit=10)
    with pytest.raises(errors.NotFound):
        await store.get_turn(ALICE, reservation.user_message_id)
    with pytest.raises(errors.NotFound):
        await store.delete_conversation(ALICE, conversation_id)
    with pytest.raises(errors.NotFound):
        await store.begin_turn(turn_request(conversation_id=conversation_id))
    for table in ("messages", "feedback", "turns", "conversations"):
        assert store_target.rows(f"SELECT count(*) FROM {table}") == [(0,)], table

    # The log delivers the turn again, or a late answer: dropped, not a new conversation.
    late = [answer, make_message(ALICE, conversation_id)]
    assert await store.write_messages(late) == 0
    assert (await store.list_conversations(ALICE, limit=10)).conversations == ()
    # The key is free again: a retry starts a new turn in a new conversation.
    fresh = await store.begin_turn(turn_request(key="k"))
    assert fresh.acquired and fresh.conversation_id != conversation_id


# --- feedback -----------------------------------------------------------------------------


async def test_feedback_on_own_assistant_messages_only(
    store: ConversationStore, store_target: StoreTarget, make_message: MessageFactory
) -> None:
    conversation_id = (await store.begin_turn(turn_request())).conversation_id
    question = make_message(ALICE, conversation_id)
    answer = make_message(ALICE, conversation_id, role=Role.ASSISTANT)
    await store.write_messages([question, answer])

    await store.submit_feedback(ALICE, Feedback(answer.message_id, Rating.THUMBS_UP, "nice"))
    await store.submit_feedback(ALICE, Feedback(answer.message_id, Rating.THUMBS_DOWN, "wrong"))
    assert store_target.rows("SELECT message_id, rating, comment FROM feedback") == [
        (answer.message_id, "thumbs_down", "wrong")
    ]

    refused = [
        (ALICE, question.message_id),
        (ALICE, new_id()),
        (ALICE, "bogus"),
        *((stranger, answer.message_id) for stranger in STRANGERS),
    ]
    for owner, message_id in refused:
        with pytest.raises(errors.NotFound):
            await store.submit_feedback(owner, Feedback(message_id, Rating.THUMBS_UP))
    assert len(store_target.rows("SELECT * FROM feedback")) == 1


# --- API keys -----------------------------------------------------------------------------


async def test_api_keys_store_only_the_secrets_hash(
    store: ConversationStore, store_target: StoreTarget, clock: FakeClock
) -> None:
    issued = await store.api_keys.create(ALICE, "laptop")
    match = re.fullmatch(r"cp_([0-9a-f-]{36})_([0-9a-f]{64})", issued.api_key)
    assert match is not None
    key_id, secret = match.groups()
    assert key_id == issued.record.key_id

    stored = await store.api_keys.get(key_id)
    assert stored.owner == ALICE and stored.label == "laptop" and not stored.revoked
    assert stored.secret_sha256 == hashlib.sha256(secret.encode()).digest()
    assert stored.create_time == clock.now

    await store.close()
    # Nowhere in the table, as text or as bytes.
    (row,) = store_target.rows("SELECT t::text, secret_sha256 FROM api_keys t")
    assert secret not in row[0] and issued.api_key not in row[0]
    assert bytes(row[1]) == hashlib.sha256(secret.encode()).digest()

    reopened = await store_target.open(clock)
    try:
        assert (await reopened.api_keys.get(key_id)).secret_sha256 == stored.secret_sha256
        with pytest.raises(errors.NotFound):
            await reopened.api_keys.get(new_id())
        with pytest.raises(errors.NotFound):
            await reopened.api_keys.get("cp_x")
    finally:
        await reopened.close()


async def test_api_keys_keep_their_roles(store: ConversationStore) -> None:
    default = await store.api_keys.create(ALICE, "")
    staff = await store.api_keys.create(ALICE, "", frozenset({"operator", "admin"}))
    assert (await store.api_keys.get(default.record.key_id)).roles == frozenset({"chat"})
    assert (await store.api_keys.get(staff.record.key_id)).roles == frozenset({"operator", "admin"})


async def test_api_keys_are_unique(store: ConversationStore) -> None:
    keys = [await store.api_keys.create(ALICE, "") for _ in range(5)]
    assert len({k.api_key for k in keys}) == len({k.record.key_id for k in keys}) == 5


# --- batch writes from the log ------------------------------------------------------------


async def test_write_messages_is_idempotent(
    store: ConversationStore, make_message: MessageFactory
) -> None:
    conversation_id = new_id()
    batch = [make_message(ALICE, conversation_id, text=f"m{i}") for i in range(10)]
    assert await store.write_messages(batch) == 10
    assert await store.write_messages(batch) == 0
    # Overlapping re-delivery plus a message repeated inside one batch.
    extra = make_message(ALICE, conversation_id)
    assert await store.write_messages([*batch[5:], extra, extra]) == 1

    history = await store.get_conversation(ALICE, conversation_id, limit=100)
    assert history.conversation.message_count == 11
    assert len({m.message_id for m in history.messages}) == 11


async def test_write_messages_keeps_every_field(
    store: ConversationStore, make_message: MessageFactory
) -> None:
    conversation_id = new_id()
    question = make_message(ALICE, conversation_id, text="Ünïcødé ✓ \\ \t tab\nnewline", model="")
    answer = make_message(
        ALICE,
        conversation_id,
        role=Role.ASSISTANT,
        text="",
        model="offline-1",
        reply_to_message_id=question.message_id,
        finish_reason=FinishReason.MAX_TOKENS,
        input_tokens=2**31 - 1,
        output_tokens=7,
        client_message_id="client-key-1",
    )
    assert await store.write_messages([question, answer]) == 2
    history = await store.get_conversation(ALICE, conversation_id, limit=10)
    assert history.messages == (question, answer)


async def test_write_messages_creates_unknown_conversations(
    store: ConversationStore, clock: FakeClock, make_message: MessageFactory
) -> None:
    conversation_id = new_id()
    start = clock.now
    clock.advance(seconds=5)
    question = make_message(
        ALICE, conversation_id, text="How do  I\nbake bread?", create_time=start
    )
    answer = make_message(ALICE, conversation_id, role=Role.ASSISTANT)
    assert await store.write_messages([answer, question]) == 2
    (conversation,) = (await store.list_conversations(ALICE, limit=10)).conversations
    assert conversation.title == "How do I bake bread?"
    assert (conversation.create_time, conversation.update_time) == (start, clock.now)
    assert conversation.message_count == 2


async def test_write_messages_rejects_other_owners_without_writing(
    store: ConversationStore, make_message: MessageFactory
) -> None:
    mine = (await store.begin_turn(turn_request())).conversation_id
    good = make_message(ALICE, mine)
    intruder = make_message(BOB, mine)
    elsewhere = make_message(ALICE_ELSEWHERE, mine)
    with pytest.raises(MessagesRejected) as rejected:
        await store.write_messages([good, intruder, elsewhere])
    assert set(rejected.value.reasons) == {1, 2}
    assert (await store.get_conversation(ALICE, mine, limit=10)).messages == ()

    assert await store.write_messages([good]) == 1
    # The same message id in another conversation is not a re-delivery: it is refused.
    forged = make_message(ALICE, new_id(), message_id=good.message_id)
    with pytest.raises(MessagesRejected) as rejected:
        await store.write_messages([forged])
    assert list(rejected.value.reasons) == [0]


async def test_concurrent_writes_of_one_batch_store_it_once(
    store: ConversationStore,
    store_target: StoreTarget,
    clock: FakeClock,
    make_message: MessageFactory,
) -> None:
    # Two consumers holding the same records (a rebalance mid-batch): each message once, and
    # the counters count each once.
    conversations = [new_id() for _ in range(3)]
    batch = [make_message(ALICE, conversations[i % 3], text=f"m{i}") for i in range(60)]
    other = await store_target.open(clock)
    try:
        written = await asyncio.gather(
            *(
                (store if i % 2 else other).write_messages(batch[i * 10 :] + batch[: i * 10])
                for i in range(6)
            )
        )
    finally:
        await other.close()
    assert sum(written) == 60
    page = await store.list_conversations(ALICE, limit=10)
    assert sorted(c.message_count for c in page.conversations) == [20, 20, 20]
    assert store_target.rows("SELECT count(*) FROM messages") == [(60,)]


async def test_messages_racing_a_delete_never_resurrect_it(
    store: ConversationStore,
    store_target: StoreTarget,
    clock: FakeClock,
    make_message: MessageFactory,
) -> None:
    conversation_id = (await store.begin_turn(turn_request())).conversation_id
    other = await store_target.open(clock)
    try:
        writes = [
            (store if i % 2 else other).write_messages([make_message(ALICE, conversation_id)])
            for i in range(10)
        ]
        await asyncio.gather(store.delete_conversation(ALICE, conversation_id), *writes)
    finally:
        await other.close()
    # Whatever was written before the delete went with it; nothing after it came back.
    assert (await store.list_conversations(ALICE, limit=10)).conversations == ()
    assert store_target.rows("SELECT count(*) FROM messages") == [(0,)]


# --- the full scan (memory rebuild) ---------------------------------------------------------


async def test_iter_messages_scans_every_owner_once_in_id_order(
    store: ConversationStore, make_message: MessageFactory
) -> None:
    written = [
        make_message(owner, conversation_id)
        for owner in (ALICE, BOB, ALICE_ELSEWHERE)
        for conversation_id in (new_id(), new_id())
        for _ in range(4)
    ]
    await store.write_messages(written)
    deleted = (await store.begin_turn(turn_request())).conversation_id
    await store.write_messages([make_message(ALICE, deleted)])
    await store.delete_conversation(ALICE, deleted)

    scanned: list[Message] = []
    after = None
    while True:
        page = await store.iter_messages(after, 5)
        scanned += page
        if len(page) < 5:
            break
        after = page[-1].message_id
    assert [m.message_id for m in scanned] == sorted(m.message_id for m in written)
    assert {m.message_id: m for m in scanned} == {m.message_id: m for m in written}
    assert await store.iter_messages(scanned[-1].message_id, 5) == []
    with pytest.raises(ValueError):
        await store.iter_messages(None, 0)


# --- the log consumer on each store ----------------------------------------------------------


def _log_record(value: events_pb2.MessageRecorded | bytes, key: str = "") -> LogRecord:
    if isinstance(value, events_pb2.MessageRecorded):
        key = key or value.message.conversation_id
        value = value.SerializeToString()
    return LogRecord(MESSAGES_TOPIC, key.encode(), value)


async def _eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.01)


@pytest.fixture(name="log")
def log_fixture(postgres_database: str) -> PostgresMessageLog:
    """The embedded message log, empty, in the module's database (its own schema)."""
    with psycopg.connect(postgres_database, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA IF EXISTS {LOG_SCHEMA} CASCADE")
    return PostgresMessageLog(postgres_database)


async def _lag(log: PostgresMessageLog) -> int:
    async with log.consumer(CONSUMER_GROUP, [MESSAGES_TOPIC]) as observer:
        return await observer.lag()


@contextlib.asynccontextmanager
async def _consuming(log: PostgresMessageLog, store: ConversationStore) -> AsyncIterator[None]:
    log_consumer = log.consumer(CONSUMER_GROUP, [MESSAGES_TOPIC])
    dead_letters = log.producer()
    consumer = BatchConsumer(
        log_consumer,
        dead_letters,
        store,
        max_records=500,
        max_wait=0.05,
        initial_backoff=0.01,
        max_backoff=0.05,
    )
    consumer.start()
    try:
        yield
    finally:
        await consumer.stop(grace=5)
        await log_consumer.close()
        await dead_letters.close()


async def _append(log: PostgresMessageLog, records: Sequence[LogRecord]) -> None:
    async with log.producer() as producer:
        await producer.append(list(records), timeout=5)


async def test_consumer_stores_a_redelivered_batch_once(
    store: ConversationStore,
    store_target: StoreTarget,
    log: PostgresMessageLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = [_log_record(recorded(ALICE)) for _ in range(30)]
    # The producer retried: the first ten are in the log twice.
    await _append(log, [*records, *records[:10]])
    write_messages = store.write_messages
    lost: list[int] = []

    async def commit_then_lose_the_answer(messages: Sequence[Message]) -> int:
        # The database commits, then the process loses the answer (a connection reset):
        # the consumer must retry, and the retry must find everything stored.
        written = await write_messages(messages)
        if not lost:
            lost.append(written)
            raise errors.Unavailable("connection reset after commit")
        return written

    monkeypatch.setattr(store, "write_messages", commit_then_lose_the_answer)
    async with _consuming(log, store):
        await _eventually(lambda: _lag_is(log, 0), "offsets committed")
    assert lost == [30]
    ids = [row[0] for row in store_target.rows("SELECT message_id FROM messages")]
    assert sorted(ids) == sorted(r.message.message_id for r in map(_decoded, records))


async def test_consumer_dead_letters_what_the_store_refuses(
    store: ConversationStore, store_target: StoreTarget, log: PostgresMessageLog
) -> None:
    good = recorded(ALICE)
    conversation_id = good.message.conversation_id
    later = recorded(ALICE, conversation_id=conversation_id)
    bad_role = recorded(ALICE)
    bad_role.message.role = resources_pb2.ROLE_UNSPECIFIED
    expected = {
        "undecodable: not a MessageRecorded": _log_record(b"\x00garbage", key=conversation_id),
        "invalid message.role 0": _log_record(bad_role),
        # Well-formed, but the conversation is ALICE's: the store refuses it.
        "conversation belongs to another owner": _log_record(
            recorded(BOB, conversation_id=conversation_id)
        ),
        # ALICE's message id again, in another conversation: refused too.
        "message id is stored for another conversation": _log_record(
            recorded(ALICE, message_id=good.message.message_id)
        ),
    }
    bad = list(expected.values())
    await _append(log, [_log_record(good), *bad[:2], _log_record(later), *bad[2:]])

    async with _consuming(log, store):
        await _eventually(lambda: _lag_is(log, 0), "offsets committed")
    stored = sorted(row[0] for row in store_target.rows("SELECT message_id FROM messages"))
    assert stored == sorted([good.message.message_id, later.message.message_id])
    async with log.consumer("dlq-inspector", [MESSAGES_DLQ_TOPIC]) as inspector:
        letters = await inspector.poll_batch(100, 1.0)
    reasons = {dict(letter.headers)[DEAD_LETTER_REASON_HEADER].decode() for letter in letters}
    assert len(letters) == len(bad) and reasons == set(expected)


async def _lag_is(log: PostgresMessageLog, expected: int) -> bool:
    return await _lag(log) == expected


def _decoded(record: LogRecord) -> events_pb2.MessageRecorded:
    return events_pb2.MessageRecorded.FromString(record.value)


# --- PostgreSQL: failures and configuration -------------------------------------------------


@pytest.mark.engines
async def test_postgres_unreachable_is_unavailable() -> None:
    with pytest.raises(errors.Unavailable):
        await PostgresConversationStore.open(
            "postgresql://chatplane@127.0.0.1:1/chatplane", connect_timeout=1
        )


@pytest.mark.engines
async def test_postgres_survives_lost_connections(postgres_dsn: str, clock: FakeClock) -> None:
    target = PostgresTarget(postgres_dsn)
    # Every pooled connection is cut server-side (a restart, a failover, an idle timeout):
    # the pool's check on checkout replaces them, so the next calls just work.
    opened = await target.open(clock)
    try:
        reservation = await opened.begin_turn(turn_request())
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'chatplane-persistence'"
                " AND datname = current_database()"
            )
        for _ in range(3):
            history = await opened.get_conversation(ALICE, reservation.conversation_id, limit=1)
            assert history.conversation.conversation_id == reservation.conversation_id
    finally:
        await opened.close()


@pytest.mark.engines
async def test_postgres_timeouts_are_unavailable(
    postgres_dsn: str, clock: FakeClock, make_message: MessageFactory
) -> None:
    opened = await PostgresConversationStore.open(
        postgres_dsn, pool_max_size=2, clock=clock, statement_timeout=0.3
    )
    conversation_id = new_id()
    try:
        # Another writer holds the conversation (a stuck replica mid-batch): the batch waits
        # no longer than the statement timeout and fails as retryable, never as a bug.
        with psycopg.connect(postgres_dsn) as holder:
            holder.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)",
                (LOCK_CLASS_CONVERSATION, lock_key(conversation_id)),
            )
            started = time.monotonic()
            with pytest.raises(errors.Unavailable):
                await opened.write_messages([make_message(ALICE, conversation_id)])
            assert time.monotonic() - started < 5
        assert await opened.write_messages([make_message(ALICE, conversation_id)]) == 1
    finally:
        await opened.close()


@pytest.mark.parametrize("profile", ["embedded", "cluster"])
async def test_factory_opens_postgresql_in_both_profiles(
    profile: Profile, postgres_dsn: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="CHATPLANE_POSTGRES_DSN"):
        await open_store(Settings(data_dir=tmp_path, profile=profile, postgres_dsn=""))
    store = await open_store(
        Settings(
            data_dir=tmp_path, profile=profile, postgres_dsn=postgres_dsn, postgres_pool_max_size=3
        )
    )
    try:
        assert isinstance(store, PostgresConversationStore)
        assert (await store.list_conversations(ALICE, limit=1)).conversations == ()
    finally:
        await store.close()


@pytest.mark.engines
async def test_postgres_cancelled_write_leaves_nothing_behind(
    postgres_dsn: str, clock: FakeClock, make_message: MessageFactory
) -> None:
    # The consumer's stop cancels a batch stuck behind a lock: the statement is cancelled
    # server-side, the transaction rolled back, and the pooled connection stays usable.
    opened = await PostgresConversationStore.open(postgres_dsn, pool_max_size=1, clock=clock)
    conversation_id = new_id()
    message = make_message(ALICE, conversation_id)
    try:
        with psycopg.connect(postgres_dsn) as holder:
            holder.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)",
                (LOCK_CLASS_CONVERSATION, lock_key(conversation_id)),
            )
            write = asyncio.create_task(opened.write_messages([message]))
            await _eventually(
                lambda: _waiting_on_lock(postgres_dsn), "the write waits for the lock"
            )
            write.cancel()
            with pytest.raises(asyncio.CancelledError):
                await write
        assert await asyncio.wait_for(opened.write_messages([message]), 5) == 1
    finally:
        await opened.close()


async def _waiting_on_lock(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'chatplane-persistence' AND wait_event_type = 'Lock'"
        ).fetchone()
    return row is not None and row[0] > 0


@pytest.mark.engines
async def test_postgres_id_raced_into_another_conversation_is_refused(
    postgres_dsn: str, clock: FakeClock, make_message: MessageFactory
) -> None:
    # A writer that holds no lock of ALICE's conversation (a forged record in BOB's) stores
    # the same message id while ALICE's batch is being written: the batch must not store it
    # twice, nor half-write, but refuse it as it would have refused it a moment later.
    store = await PostgresTarget(postgres_dsn).open(clock)
    try:
        bobs = (await store.begin_turn(turn_request(BOB))).conversation_id
        message = make_message(ALICE, new_id())
        async with (
            await psycopg.AsyncConnection.connect(postgres_dsn) as forger,
            await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as watcher,
            forger.transaction(),
        ):
            await forger.execute(
                "INSERT INTO messages (message_id, conversation_id, tenant_id, user_id,"
                " role, text, status, model, create_time, reply_to_message_id,"
                " finish_reason, input_tokens, output_tokens, client_message_id,"
                " store_time) VALUES (%s, %s, %s, %s, 'user', 'forged', 'complete', '',"
                " now(), '', 'unspecified', 0, 0, '', now())",
                (message.message_id, bobs, BOB.tenant_id, BOB.user_id),
            )
            writing = asyncio.ensure_future(store.write_messages([message]))
            # Until the store's insert waits for the forger's uncommitted key.
            deadline = time.monotonic() + 10
            while True:
                cursor = await watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND application_name = 'chatplane-persistence'"
                    " AND datname = current_database()"
                )
                row = await cursor.fetchone()
                if row is not None and row[0] > 0:
                    break
                assert not writing.done(), "the batch did not wait for the forged key"
                assert time.monotonic() < deadline, "the batch never reached its insert"
                await asyncio.sleep(0.02)
        with pytest.raises(MessagesRejected) as rejected:
            await writing
        assert rejected.value.reasons == {0: "message id is stored for another conversation"}
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            rows = admin.execute(
                "SELECT conversation_id FROM messages WHERE message_id = %s",
                (message.message_id,),
            ).fetchall()
            conversations = admin.execute(
                "SELECT count(*) FROM conversations WHERE conversation_id = %s",
                (message.conversation_id,),
            ).fetchone()
        assert rows == [(bobs,)]
        assert conversations == (0,)
    finally:
        await store.close()

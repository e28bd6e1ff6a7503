"""The SQLite ConversationStore without gRPC: turns and their idempotency, owner scoping,
keyset paging, deletion, feedback, API keys and idempotent batch writes."""

from __future__ import annotations

import asyncio
import hashlib
import re
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from chatplane.common import errors
from chatplane.common.ids import new_id
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
from chatplane.persistence.store.sqlite import SqliteConversationStore, sqlite_migrations

if TYPE_CHECKING:
    from conftest import FakeClock, MessageFactory

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


def rows(path: Path, query: str) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


async def test_schema_is_migrated_once(store: SqliteConversationStore, store_path: Path) -> None:
    await store.close()
    async with await SqliteConversationStore.open(store_path):
        pass
    versions = rows(store_path, "SELECT version, name FROM schema_version")
    assert versions == [(m.version, m.name) for m in sqlite_migrations()]
    assert rows(store_path, "PRAGMA journal_mode") == [("wal",)]


async def test_closed_store_is_unavailable(store: SqliteConversationStore) -> None:
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
    store: SqliteConversationStore, store_path: Path, clock: FakeClock
) -> None:
    # A second store on the same file stands for a second process: its own connection,
    # contending for the same write lock.
    async with await SqliteConversationStore.open(store_path, clock=clock) as other:
        calls = [(store if i % 2 else other).begin_turn(turn_request(key="k")) for i in range(20)]
        reservations = await asyncio.gather(*calls)
    assert sum(r.acquired for r in reservations) == 1
    assert len({(r.conversation_id, r.user_message_id) for r in reservations}) == 1
    assert rows(store_path, "SELECT count(*) FROM conversations") == [(1,)]


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


# --- deletion -----------------------------------------------------------------------------


async def test_delete_removes_everything_and_never_resurrects(
    store: ConversationStore, store_path: Path, make_message: MessageFactory
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
        assert rows(store_path, f"SELECT count(*) FROM {table}") == [(0,)], table

    # The log delivers the turn again, or a late answer: dropped, not a new conversation.
    late = [answer, make_message(ALICE, conversation_id)]
    assert await store.write_messages(late) == 0
    assert (await store.list_conversations(ALICE, limit=10)).conversations == ()
    # The key is free again: a retry starts a new turn in a new conversation.
    fresh = await store.begin_turn(turn_request(key="k"))
    assert fresh.acquired and fresh.conversation_id != conversation_id


# --- feedback -----------------------------------------------------------------------------


async def test_feedback_on_own_assistant_messages_only(
    store: ConversationStore, store_path: Path, make_message: MessageFactory
) -> None:
    conversation_id = (await store.begin_turn(turn_request())).conversation_id
    question = make_message(ALICE, conversation_id)
    answer = make_message(ALICE, conversation_id, role=Role.ASSISTANT)
    await store.write_messages([question, answer])

    await store.submit_feedback(ALICE, Feedback(answer.message_id, Rating.THUMBS_UP, "nice"))
    await store.submit_feedback(ALICE, Feedback(answer.message_id, Rating.THUMBS_DOWN, "wrong"))
    assert rows(store_path, "SELECT message_id, rating, comment FROM feedback") == [
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
    assert len(rows(store_path, "SELECT * FROM feedback")) == 1


# --- API keys -----------------------------------------------------------------------------


async def test_api_keys_store_only_the_secrets_hash(
    store: SqliteConversationStore, store_path: Path
) -> None:
    issued = await store.create_api_key(ALICE, "laptop")
    match = re.fullmatch(r"cp_([0-9a-f-]{36})_([0-9a-f]{64})", issued.api_key)
    assert match is not None
    key_id, secret = match.groups()
    assert key_id == issued.record.key_id

    stored = await store.get_api_key(key_id)
    assert stored.owner == ALICE and stored.label == "laptop" and not stored.revoked
    assert stored.secret_sha256 == hashlib.sha256(secret.encode()).digest()

    await store.close()
    files = [p for p in store_path.parent.iterdir() if p.name.startswith(store_path.name)]
    assert files
    for path in files:
        data = path.read_bytes()
        assert secret.encode() not in data, path
        assert issued.api_key.encode() not in data, path

    async with await SqliteConversationStore.open(store_path) as reopened:
        with pytest.raises(errors.NotFound):
            await reopened.get_api_key(new_id())
        with pytest.raises(errors.NotFound):
            await reopened.get_api_key("cp_x")


async def test_api_keys_are_unique(store: ConversationStore) -> None:
    keys = [await store.create_api_key(ALICE, "") for _ in range(5)]
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

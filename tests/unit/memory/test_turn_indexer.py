"""Memory's indexer of the message log, on real engines (the log's and the index's PostgreSQL,
the real embedding model): batches by size and by time with one embedding call each, recall
after indexing, no message embedded or indexed twice across a crash between the index write
and the commit, poison records dead-lettered, an erased user's records skipped."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest

from chatplane.common.ids import new_id
from chatplane.common.topics import MEMORY_DLQ_TOPIC, MESSAGES_TOPIC
from chatplane.crypto.kek import new_kek_line, parse_keks
from chatplane.crypto.keyring import Keyring, StoreKeySource
from chatplane.crypto.log_records import sealed_message
from chatplane.internal.v1 import events_pb2
from chatplane.log import LogRecord, MessageLogProducer, PostgresMessageLog
from chatplane.log.batch_consumer import DEAD_LETTER_REASON_HEADER
from chatplane.memory.conversational_memory import ConversationalMemory
from chatplane.memory.embedding import SentenceEmbedder
from chatplane.memory.index.base import MemoryItem
from chatplane.memory.index.postgres import PostgresMemoryIndex
from chatplane.memory.turn_indexer import CONSUMER_GROUP, TurnIndexer
from chatplane.persistence.store.base import Owner
from chatplane.persistence.store.postgres import PostgresConversationStore
from tests.contract.store_fixtures import recorded

ALICE = Owner("tenant-a", "alice")


class CountingEmbedder(SentenceEmbedder):
    """The real model, counting its calls and the texts of each."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:  # type: ignore[override]
        self.calls.append(list(texts))
        return super().embed(texts)


class CrashAfterWrite(PostgresMemoryIndex):
    """The real index; with `crash` set, the next upsert writes and then never returns, as a
    process killed between the index write and the offsets' commit."""

    crash = False
    written = asyncio.Event()

    async def upsert(self, items: Sequence[MemoryItem], vectors: np.ndarray) -> None:  # type: ignore[override]
        await super().upsert(items, vectors)
        if self.crash:
            self.crash = False
            self.written.set()
            await asyncio.Event().wait()


@pytest.fixture(scope="module")
def embedder() -> CountingEmbedder:
    return CountingEmbedder()


@pytest.fixture
async def store(postgres_database: str) -> AsyncIterator[PostgresConversationStore]:
    opened = await PostgresConversationStore.open(postgres_database, pool_max_size=2)
    yield opened
    await opened.close()


@pytest.fixture
def keyring(store: PostgresConversationStore) -> Keyring:
    keks = parse_keks(new_kek_line("k"), "test")
    return Keyring(StoreKeySource(store.data_keys, keks), keks, cache_seconds=0)


@pytest.fixture
async def index(postgres_database: str) -> AsyncIterator[CrashAfterWrite]:
    opened = CrashAfterWrite(postgres_database)
    opened.written = asyncio.Event()
    yield opened
    await opened.close()


@pytest.fixture
async def memory(
    index: CrashAfterWrite, embedder: CountingEmbedder
) -> AsyncIterator[ConversationalMemory]:
    embedder.calls.clear()
    yield ConversationalMemory(embedder, index)


@pytest.fixture
def log(postgres_database: str) -> PostgresMessageLog:
    return PostgresMessageLog(postgres_database)


@pytest.fixture
async def producer(log: PostgresMessageLog) -> AsyncIterator[MessageLogProducer]:
    opened = log.producer()
    yield opened
    await opened.close()


@contextlib.asynccontextmanager
async def indexing(
    log: PostgresMessageLog,
    memory: ConversationalMemory,
    keyring: Keyring | None,
    *,
    max_records: int = 64,
    max_wait: float = 0.2,
    grace: float = 5.0,
) -> AsyncIterator[TurnIndexer]:
    log_consumer = log.consumer(CONSUMER_GROUP, [MESSAGES_TOPIC])
    dead_letters = log.producer()
    indexer = TurnIndexer(
        log_consumer,
        dead_letters,
        memory,
        keyring=keyring,
        max_records=max_records,
        max_wait=max_wait,
        initial_backoff=0.01,
        max_backoff=0.05,
    )
    indexer.start()
    try:
        yield indexer
    finally:
        await indexer.stop(grace=grace)
        await log_consumer.close()
        await dead_letters.close()


async def sealed_record(
    keyring: Keyring | None, owner: Owner, text: str, conversation_id: str = ""
) -> tuple[str, LogRecord]:
    value = recorded(owner, conversation_id=conversation_id or new_id(), text=text)
    value.message.CopyFrom(
        await sealed_message(keyring, owner.tenant_id, owner.user_id, value.message)
    )
    record = LogRecord(
        MESSAGES_TOPIC, value.message.conversation_id.encode(), value.SerializeToString()
    )
    return value.message.message_id, record


async def eventually(check, within: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.02)


async def indexed(index: PostgresMemoryIndex, owner: Owner, ids: Sequence[str]) -> set[str]:
    return await index.indexed_item_ids(owner.tenant_id, ids)


async def test_a_full_batch_is_embedded_in_one_call_and_recalled(
    log: PostgresMessageLog,
    producer: MessageLogProducer,
    memory: ConversationalMemory,
    index: CrashAfterWrite,
    embedder: CountingEmbedder,
    keyring: Keyring,
) -> None:
    texts = [f"note {i}: my locker number is {4700 + i}" for i in range(10)]
    made = [await sealed_record(keyring, ALICE, text) for text in texts]
    await producer.append([record for _, record in made], timeout=10)
    ids = [message_id for message_id, _ in made]
    # A batch closes at 10 records long before its 60 s wait: size, not time, closed it.
    async with indexing(log, memory, keyring, max_records=10, max_wait=60) as indexer:
        await eventually(lambda: _true(indexer.indexed == 10))
    assert embedder.calls == [texts]
    assert await indexed(index, ALICE, ids) == set(ids)
    recall = await memory.recall(ALICE.tenant_id, ALICE.user_id, "", "locker number 4703", 0, 3)
    assert made[3][0] in {found.item.item_id for found in recall.relevant}


async def test_a_batch_that_is_not_full_closes_after_its_wait(
    log: PostgresMessageLog,
    producer: MessageLogProducer,
    memory: ConversationalMemory,
    embedder: CountingEmbedder,
    keyring: Keyring,
) -> None:
    made = [await sealed_record(keyring, ALICE, f"short note {i}") for i in range(3)]
    async with indexing(log, memory, keyring, max_records=100, max_wait=0.3) as indexer:
        started = time.monotonic()
        await producer.append([record for _, record in made], timeout=10)
        await eventually(lambda: _true(indexer.indexed == 3))
        waited = time.monotonic() - started
    assert len(embedder.calls) == 1 and len(embedder.calls[0]) == 3
    assert 0.25 <= waited < 10


async def test_a_crash_between_index_write_and_commit_embeds_nothing_twice(
    log: PostgresMessageLog,
    producer: MessageLogProducer,
    memory: ConversationalMemory,
    index: CrashAfterWrite,
    embedder: CountingEmbedder,
    keyring: Keyring,
) -> None:
    first = [await sealed_record(keyring, ALICE, f"first batch {i}") for i in range(4)]
    second = [await sealed_record(keyring, ALICE, f"second batch {i}") for i in range(4)]
    await producer.append([record for _, record in first], timeout=10)
    async with indexing(log, memory, keyring, max_records=4, max_wait=0.1) as indexer:
        await eventually(lambda: _true(indexer.indexed == 4))
        index.crash = True
        await producer.append([record for _, record in second], timeout=10)
        await asyncio.wait_for(index.written.wait(), 30)
        # Killed mid-batch: written to the index, offsets not committed.
        await indexer.stop(grace=0)
    async with log.consumer(CONSUMER_GROUP, [MESSAGES_TOPIC]) as observer:
        assert await observer.lag() == 4
    # The restarted indexer gets the second batch again, finds it indexed, embeds nothing.
    async with indexing(log, memory, keyring, max_records=4, max_wait=0.1) as restarted:
        await eventually(lambda: _true(restarted.skipped == 4))
        assert await _lag_reaches_zero(log)
    embedded = [text for call in embedder.calls for text in call]
    assert sorted(embedded) == sorted([f"first batch {i}" for i in range(4)]) + sorted(
        [f"second batch {i}" for i in range(4)]
    )
    ids = [message_id for message_id, _ in first + second]
    assert await indexed(index, ALICE, ids) == set(ids)


async def test_poison_records_are_dead_lettered_and_the_rest_indexed(
    log: PostgresMessageLog,
    producer: MessageLogProducer,
    memory: ConversationalMemory,
    index: CrashAfterWrite,
    keyring: Keyring,
) -> None:
    good_id, good = await sealed_record(keyring, ALICE, "a perfectly good message")
    _, tampered = await sealed_record(keyring, ALICE, "sealed for another message")
    value = events_pb2.MessageRecorded.FromString(tampered.value)
    # The envelope is bound to its message id: under another id it never opens.
    tampered_id = value.message.message_id = new_id()
    poison = [
        LogRecord(MESSAGES_TOPIC, b"k", b"\xff\x00 not a protobuf"),
        LogRecord(MESSAGES_TOPIC, tampered.key, value.SerializeToString()),
    ]
    await producer.append([poison[0], good, poison[1]], timeout=10)
    async with indexing(log, memory, keyring, max_wait=0.1) as indexer:
        await eventually(lambda: _true(indexer.dead_lettered == 2 and indexer.indexed == 1))
        assert await _lag_reaches_zero(log)
    assert await indexed(index, ALICE, [good_id]) == {good_id}
    async with log.consumer("dlq-inspector", [MEMORY_DLQ_TOPIC]) as inspector:
        letters = await inspector.poll_batch(10, 2.0)
    reasons = sorted(dict(letter.headers)[DEAD_LETTER_REASON_HEADER].decode() for letter in letters)
    assert len(reasons) == 2
    assert reasons[0].startswith("text does not open") or reasons[1].startswith(
        "text does not open"
    )
    assert await indexed(index, ALICE, [tampered_id]) == set()


async def test_an_erased_users_records_are_skipped_not_dead_lettered(
    log: PostgresMessageLog,
    producer: MessageLogProducer,
    memory: ConversationalMemory,
    index: CrashAfterWrite,
    embedder: CountingEmbedder,
    keyring: Keyring,
) -> None:
    erased = Owner("tenant-a", f"erased-{new_id()}")
    gone = [await sealed_record(keyring, erased, f"forget me {i}") for i in range(3)]
    kept_id, kept = await sealed_record(keyring, ALICE, "keep me")
    assert await keyring.destroy_user_key(erased.tenant_id, erased.user_id)
    await producer.append([*(record for _, record in gone), kept], timeout=10)
    async with indexing(log, memory, keyring, max_wait=0.1) as indexer:
        await eventually(lambda: _true(indexer.indexed == 1 and indexer.skipped == 3))
        assert await _lag_reaches_zero(log)
        assert indexer.dead_lettered == 0
    assert await indexed(index, erased, [m for m, _ in gone]) == set()
    assert await indexed(index, ALICE, [kept_id]) == {kept_id}
    assert [text for call in embedder.calls for text in call] == ["keep me"]


async def _true(value: bool) -> bool:
    return value


async def _lag_reaches_zero(log: PostgresMessageLog) -> bool:
    async with log.consumer(CONSUMER_GROUP, [MESSAGES_TOPIC]) as observer:
        deadline = time.monotonic() + 10
        while await observer.lag():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
    return True

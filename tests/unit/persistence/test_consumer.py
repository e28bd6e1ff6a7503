"""The log → store consumer against the real embedded log and the store, both on PostgreSQL:
batching by size and by time, dead letters, and offsets committed only after the database
commit."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import psycopg
import pytest

from chatplane.common import errors
from chatplane.common.topics import MESSAGES_DLQ_TOPIC, MESSAGES_TOPIC
from chatplane.internal.v1 import events_pb2
from chatplane.log import LogRecord, MessageLogProducer, PostgresMessageLog
from chatplane.log.batch_consumer import DEAD_LETTER_REASON_HEADER, DEAD_LETTER_SOURCE_HEADER
from chatplane.persistence.consumer import CONSUMER_GROUP, BatchConsumer
from chatplane.persistence.store.base import ConversationStore, Message, Owner
from chatplane.persistence.store.postgres import PostgresConversationStore
from chatplane.v1 import resources_pb2

if TYPE_CHECKING:
    from conftest import FakeClock

ALICE = Owner("tenant-a", "alice")
BOB = Owner("tenant-a", "bob")
TRACE = ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")

Recorder = Callable[..., events_pb2.MessageRecorded]


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], *, within: float = 10.0, what: str = ""
) -> None:
    """Poll `check` until it is true; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.01)


def stored_ids(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as connection:
        return [row[0] for row in connection.execute("SELECT message_id FROM messages")]


def log_record(value: events_pb2.MessageRecorded | bytes, key: str = "") -> LogRecord:
    if isinstance(value, events_pb2.MessageRecorded):
        key = key or value.message.conversation_id
        value = value.SerializeToString()
    return LogRecord(MESSAGES_TOPIC, key.encode(), value, (TRACE,))


@pytest.fixture
async def producer(log: PostgresMessageLog) -> AsyncIterator[MessageLogProducer]:
    opened = log.producer()
    yield opened
    await opened.close()


async def lag(log: PostgresMessageLog) -> int:
    """The Persistence group's lag, seen from outside as an operator would."""
    async with log.consumer(CONSUMER_GROUP, [MESSAGES_TOPIC]) as observer:
        return await observer.lag()


@contextlib.asynccontextmanager
async def consuming(
    log: PostgresMessageLog,
    store: ConversationStore,
    *,
    max_records: int = 500,
    max_wait: float = 0.05,
) -> AsyncIterator[BatchConsumer]:
    log_consumer = log.consumer(CONSUMER_GROUP, [MESSAGES_TOPIC])
    dead_letters = log.producer()
    consumer = BatchConsumer(
        log_consumer,
        dead_letters,
        store,
        max_records=max_records,
        max_wait=max_wait,
        initial_backoff=0.01,
        max_backoff=0.05,
    )
    consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop(grace=5)
        await log_consumer.close()
        await dead_letters.close()


class FlakyStore(PostgresConversationStore):
    """Fails every batch write until `healthy`; with `lose_ack`, the first write commits and
    then fails anyway, as if the process died between the database commit and its answer."""

    healthy = False
    lose_ack = False
    failures = 0

    async def write_messages(self, messages: Sequence[Message]) -> int:
        if self.lose_ack and self.failures == 0:
            await super().write_messages(messages)
            self.failures += 1
            raise errors.Unavailable("connection reset after commit")
        if not self.healthy and not self.lose_ack:
            self.failures += 1
            raise errors.Unavailable("disk unavailable")
        return await super().write_messages(messages)


async def test_batches_close_when_full(
    log: PostgresMessageLog,
    store: PostgresConversationStore,
    postgres_database: str,
    producer: MessageLogProducer,
    make_recorded: Recorder,
) -> None:
    records = [log_record(make_recorded(ALICE)) for _ in range(25)]
    await producer.append(records, timeout=5)
    # max_wait far beyond the test's deadline: only full batches can be stored in time.
    async with consuming(log, store, max_records=10, max_wait=60) as consumer:
        await eventually(lambda: consumer.counters.records_stored == 20, what="two full batches")
        assert consumer.counters.batches == 2
    # The third, partial batch was still being polled at stop: nothing of it is lost.
    assert await lag(log) == 5
    async with consuming(log, store, max_records=10, max_wait=0.05) as consumer:
        await eventually(lambda: consumer.counters.records_stored == 5, what="the rest")
    assert len(set(stored_ids(postgres_database))) == 25
    assert await lag(log) == 0


async def test_batches_close_after_max_wait(
    log: PostgresMessageLog,
    store: PostgresConversationStore,
    producer: MessageLogProducer,
    make_recorded: Recorder,
) -> None:
    await producer.append([log_record(make_recorded(ALICE)) for _ in range(3)], timeout=5)
    started = time.monotonic()
    async with consuming(log, store, max_records=1000, max_wait=0.3) as consumer:
        await eventually(lambda: consumer.counters.records_stored == 3, what="a timed batch")
        elapsed = time.monotonic() - started
        assert consumer.counters.batches == 1
    assert 0.25 <= elapsed < 5


async def test_invalid_records_are_dead_lettered_and_the_rest_stored(
    log: PostgresMessageLog,
    store: PostgresConversationStore,
    postgres_database: str,
    producer: MessageLogProducer,
    make_recorded: Recorder,
) -> None:
    good = make_recorded(ALICE)
    conversation_id = good.message.conversation_id
    later = make_recorded(ALICE, conversation_id=conversation_id)
    bad_role = make_recorded(ALICE)
    bad_role.message.role = resources_pb2.ROLE_UNSPECIFIED
    no_tenant = make_recorded(ALICE)
    no_tenant.tenant_id = ""
    bad_status = make_recorded(ALICE)
    bad_status.message.status = resources_pb2.MessageStatus.ValueType(7)
    expected = {
        "undecodable: not a MessageRecorded": log_record(b"\x00garbage", key=conversation_id),
        "unsupported schema_version 2": log_record(make_recorded(ALICE, schema_version=2)),
        "missing or invalid message.message_id": log_record(make_recorded(ALICE, message_id="")),
        "missing or invalid message.conversation_id": log_record(
            make_recorded(ALICE, conversation_id="c-1"), key="c-1"
        ),
        "missing tenant_id": log_record(no_tenant),
        "invalid message.role 0": log_record(bad_role),
        "invalid message.status 7": log_record(bad_status),
        # Well-formed, but the conversation is ALICE's: the store refuses it.
        "conversation belongs to another owner": log_record(
            make_recorded(BOB, conversation_id=conversation_id)
        ),
    }
    bad = list(expected.values())
    batch = [log_record(good), *bad[:4], log_record(later), *bad[4:]]
    await producer.append(batch, timeout=5)

    async with consuming(log, store) as consumer:
        await eventually(lambda: consumer.counters.records_dead_lettered == len(bad), what="DLQ")
        assert consumer.counters.records_stored == 2
    assert sorted(stored_ids(postgres_database)) == sorted(
        [good.message.message_id, later.message.message_id]
    )
    assert await lag(log) == 0

    async with log.consumer("dlq-inspector", [MESSAGES_DLQ_TOPIC]) as inspector:
        letters = await inspector.poll_batch(100, 1.0)
    assert len(letters) == len(bad)
    reasons = {}
    for letter in letters:
        headers = dict(letter.headers)
        reasons[headers[DEAD_LETTER_REASON_HEADER].decode()] = letter
        assert letter.headers[0] == TRACE
        assert headers[DEAD_LETTER_SOURCE_HEADER].startswith(f"{MESSAGES_TOPIC}/0/".encode())
    assert set(reasons) == set(expected)
    for reason, original in expected.items():
        assert (reasons[reason].key, reasons[reason].value) == (original.key, original.value)


async def test_nothing_is_committed_until_the_store_commits(
    log: PostgresMessageLog,
    postgres_database: str,
    clock: FakeClock,
    producer: MessageLogProducer,
    make_recorded: Recorder,
) -> None:
    records = [log_record(make_recorded(ALICE)) for _ in range(30)]
    await producer.append(records, timeout=5)
    async with (
        await FlakyStore.open(postgres_database, pool_max_size=4, clock=clock) as store,
        consuming(log, store) as consumer,
    ):
        assert isinstance(store, FlakyStore)
        await eventually(lambda: store.failures >= 3, what="retries")
        assert await lag(log) == 30
        assert stored_ids(postgres_database) == []

        store.healthy = True
        await eventually(lambda: consumer.counters.records_stored == 30, what="stored")
        await eventually(_lag_is_zero(log), what="offsets committed")
        assert consumer.counters.retries >= 3
    assert sorted(stored_ids(postgres_database)) == sorted(
        r.message.message_id for r in _decode(records)
    )


async def test_a_lost_store_answer_stores_the_batch_once(
    log: PostgresMessageLog,
    postgres_database: str,
    clock: FakeClock,
    producer: MessageLogProducer,
    make_recorded: Recorder,
) -> None:
    records = [log_record(make_recorded(ALICE)) for _ in range(30)]
    await producer.append(records, timeout=5)
    async with (
        await FlakyStore.open(postgres_database, pool_max_size=4, clock=clock) as store,
        consuming(log, store) as consumer,
    ):
        assert isinstance(store, FlakyStore)
        store.lose_ack = True
        await eventually(_lag_is_zero(log), what="offsets committed")
        # The retry found every message stored already.
        assert consumer.counters.records_skipped == 30
    ids = stored_ids(postgres_database)
    assert len(ids) == len(set(ids)) == 30


async def test_stop_abandons_a_failing_batch_uncommitted(
    log: PostgresMessageLog,
    postgres_database: str,
    clock: FakeClock,
    producer: MessageLogProducer,
    make_recorded: Recorder,
) -> None:
    await producer.append([log_record(make_recorded(ALICE)) for _ in range(5)], timeout=5)
    async with await FlakyStore.open(postgres_database, pool_max_size=4, clock=clock) as store:
        assert isinstance(store, FlakyStore)
        async with consuming(log, store) as consumer:
            await eventually(lambda: store.failures >= 1, what="a failing write")
            started = time.monotonic()
            await consumer.stop(grace=5)
            assert time.monotonic() - started < 1
    assert await lag(log) == 5


async def test_stop_while_idle_is_prompt(
    log: PostgresMessageLog, store: PostgresConversationStore
) -> None:
    async with consuming(log, store, max_wait=60) as consumer:
        await asyncio.sleep(0)
        started = time.monotonic()
        await consumer.stop(grace=5)
        assert time.monotonic() - started < 1


async def test_cancelling_run_is_clean(
    log: PostgresMessageLog,
    store: PostgresConversationStore,
    producer: MessageLogProducer,
    make_recorded: Recorder,
) -> None:
    async with (
        log.consumer(CONSUMER_GROUP, [MESSAGES_TOPIC]) as log_consumer,
        log.producer() as dead_letters,
    ):
        consumer = BatchConsumer(log_consumer, dead_letters, store, max_records=10, max_wait=60)
        task = asyncio.create_task(consumer.run())
        await producer.append([log_record(make_recorded(ALICE)) for _ in range(10)], timeout=5)
        await eventually(lambda: consumer.counters.batches == 1, what="a batch")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await lag(log) == 0


async def test_missing_create_time_falls_back_to_the_log_time(
    log: PostgresMessageLog,
    store: PostgresConversationStore,
    producer: MessageLogProducer,
    make_recorded: Recorder,
) -> None:
    record = make_recorded(ALICE)
    record.message.ClearField("create_time")
    before = time.time()
    await producer.append([log_record(record)], timeout=5)
    async with consuming(log, store) as consumer:
        await eventually(lambda: consumer.counters.records_stored == 1, what="stored")
    history = await store.get_conversation(ALICE, record.message.conversation_id, limit=1)
    assert abs(history.messages[0].create_time.timestamp() - before) < 5


def _lag_is_zero(log: PostgresMessageLog) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await lag(log) == 0

    return check


def _decode(records: Sequence[LogRecord]) -> list[events_pb2.MessageRecorded]:
    return [events_pb2.MessageRecorded.FromString(r.value) for r in records]

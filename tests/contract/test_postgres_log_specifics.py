"""Behaviour of the PostgreSQL message log beyond the shared contract: offsets visible strictly
in order under concurrent producers, appends bounded by their timeout, consumers woken by
NOTIFY (and by the fallback read when a notification is missing), idle consumers that leave
the database alone, reconnection, the schema created by whichever process comes first, and
erasure of a conversation's records. Each test gets a fresh database (`postgres_database`)."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from chatplane.common.errors import Unavailable
from chatplane.log import ConsumedRecord, PostgresMessageLog
from chatplane.log.postgres import CONSUMER_APPLICATION, SCHEMA
from chatplane.log.record_erasure import PostgresLogEraser
from tests.contract.test_message_log import consume, records_of

TOPIC = "chatplane.test"
APPEND_TIMEOUT = 5.0


async def test_concurrent_producers_never_let_a_consumer_skip_an_offset(
    postgres_database: str,
) -> None:
    """Producers commit concurrently while one consumer reads and commits: every offset from
    0 on is delivered exactly once, in order, with no record lost."""
    log = PostgresMessageLog(postgres_database)
    producers, appends, per_append = 6, 120, 2
    total = producers * appends * per_append
    got: list[ConsumedRecord] = []

    async def produce(number: int) -> None:
        key = f"conversation-{number}".encode()
        async with log.producer() as producer:
            for n in range(appends):
                batch = records_of(TOPIC, key, per_append, start=n * per_append)
                await producer.append(batch, timeout=APPEND_TIMEOUT)

    async def drain() -> None:
        async with log.consumer("persistence", [TOPIC]) as consumer:
            give_up = time.monotonic() + 60
            while len(got) < total:
                assert time.monotonic() < give_up, f"got {len(got)} of {total} records"
                batch = await consumer.poll_batch(50, max_wait=0.05)
                await consumer.commit(batch)
                got.extend(batch)
            assert await consumer.lag() == 0

    await asyncio.gather(drain(), *(produce(number) for number in range(producers)))

    assert [r.offset for r in got] == list(range(total))
    for number in range(producers):
        key = f"conversation-{number}".encode()
        values = [r.value for r in got if r.key == key]
        assert values == [r.value for r in records_of(TOPIC, key, appends * per_append)]


async def test_an_append_blocked_past_its_timeout_raises_unavailable_and_stores_nothing(
    postgres_database: str,
) -> None:
    log = PostgresMessageLog(postgres_database)
    async with log.producer() as producer:
        await producer.append(records_of(TOPIC, b"k", 1), timeout=APPEND_TIMEOUT)
        async with await psycopg.AsyncConnection.connect(postgres_database) as holder:
            # Another transaction holding the topic's row, as a stuck append would.
            await holder.execute(
                f"SELECT * FROM {SCHEMA}.topics WHERE topic = %s FOR UPDATE", (TOPIC,)
            )
            started = time.monotonic()
            with pytest.raises(Unavailable):
                await producer.append(records_of(TOPIC, b"k", 1, start=1), timeout=0.3)
            assert time.monotonic() - started < 1.0
            await holder.rollback()
        # Once the lock is released the producer works again.
        await producer.append(records_of(TOPIC, b"k", 1, start=2), timeout=APPEND_TIMEOUT)
    async with log.consumer("g", [TOPIC]) as consumer:
        got = await consume(consumer, 2)
        assert [r.value for r in got] == [b"k:0", b"k:2"]
        assert [r.offset for r in got] == [0, 1]
        assert await consumer.lag() == 2


async def test_a_waiting_consumer_wakes_on_the_notification(postgres_database: str) -> None:
    # The fallback read comes only after a minute: a quick return proves the NOTIFY woke it.
    log = PostgresMessageLog(postgres_database, wake_interval=60.0)
    async with log.consumer("g", [TOPIC]) as consumer, log.producer() as producer:
        assert await consumer.poll_batch(1, max_wait=0) == []
        started = time.monotonic()
        poll = asyncio.create_task(consumer.poll_batch(3, max_wait=30.0))
        await producer.append(records_of(TOPIC, b"k", 3), timeout=APPEND_TIMEOUT)
        got = await poll
        assert [r.value for r in got] == [b"k:0", b"k:1", b"k:2"]
        assert time.monotonic() - started < 1.0


async def test_an_append_to_another_topic_does_not_end_the_wait(postgres_database: str) -> None:
    log = PostgresMessageLog(postgres_database, wake_interval=60.0)
    async with log.consumer("g", [TOPIC]) as consumer, log.producer() as producer:
        assert await consumer.poll_batch(1, max_wait=0) == []
        poll = asyncio.create_task(consumer.poll_batch(1, max_wait=0.5))
        await producer.append(records_of("chatplane.other", b"k", 1), timeout=APPEND_TIMEOUT)
        started = time.monotonic()
        assert await poll == []
        assert time.monotonic() - started > 0.2


async def test_records_without_a_notification_are_read_within_the_wake_interval(
    postgres_database: str,
) -> None:
    log = PostgresMessageLog(postgres_database, wake_interval=0.3)
    async with log.consumer("g", [TOPIC]) as consumer:
        assert await consumer.poll_batch(1, max_wait=0) == []
        # Written behind the log's back: no NOTIFY, as if the notification had been lost.
        async with await psycopg.AsyncConnection.connect(postgres_database) as writer:
            await writer.execute(
                f"INSERT INTO {SCHEMA}.topics (topic, next_offset) VALUES (%s, 1)", (TOPIC,)
            )
            await writer.execute(
                f"INSERT INTO {SCHEMA}.records"
                " (topic, log_offset, key, value, headers, timestamp_ms)"
                " VALUES (%s, 0, 'k', 'v', '', 0)",
                (TOPIC,),
            )
        started = time.monotonic()
        got = await consumer.poll_batch(1, max_wait=5.0)
        assert [(r.offset, r.value) for r in got] == [(0, b"v")]
        assert time.monotonic() - started < 1.0


async def test_an_idle_consumer_reads_the_tables_only_at_the_wake_interval(
    postgres_database: str,
) -> None:
    """A consumer polled in a tight loop (as Persistence polls, 50 ms at a time) over an idle
    log reads about once per wake interval, not once per poll: its backend's statements are
    counted by sampling when its latest one started."""
    log = PostgresMessageLog(postgres_database, wake_interval=1.0)
    polls = 0
    statements: set[object] = set()
    async with log.consumer("g", [TOPIC]) as consumer:
        assert await consumer.poll_batch(1, max_wait=0) == []
        until = time.monotonic() + 3.0

        async def poll() -> None:
            nonlocal polls
            while time.monotonic() < until:
                assert await consumer.poll_batch(100, max_wait=0.05) == []
                polls += 1

        async def sample() -> None:
            async with await psycopg.AsyncConnection.connect(
                postgres_database, autocommit=True
            ) as observer:
                while time.monotonic() < until:
                    cursor = await observer.execute(
                        "SELECT query_start FROM pg_stat_activity"
                        " WHERE datname = current_database() AND application_name = %s",
                        (CONSUMER_APPLICATION,),
                    )
                    statements.update(row[0] for row in await cursor.fetchall())
                    await asyncio.sleep(0.01)

        await asyncio.gather(poll(), sample())

    assert polls >= 40
    # About 3 (one read per second); reading at every poll would be 40 or more.
    assert 1 <= len(statements) <= 6


async def test_lag_does_not_wait_for_a_waiting_poll(postgres_database: str) -> None:
    log = PostgresMessageLog(postgres_database, wake_interval=60.0)
    async with log.consumer("g", [TOPIC]) as consumer, log.producer() as producer:
        await producer.append(records_of(TOPIC, b"k", 1), timeout=APPEND_TIMEOUT)
        # The poll takes the first record at once, then waits for a second one.
        poll = asyncio.create_task(consumer.poll_batch(2, max_wait=10.0))
        started = time.monotonic()
        assert await consumer.lag() == 1
        assert await consumer.lag() == 1
        assert time.monotonic() - started < 1.0
        # The interrupted poll goes on waiting and still gets what comes later.
        assert not poll.done()
        await producer.append(records_of(TOPIC, b"k", 1, start=1), timeout=APPEND_TIMEOUT)
        got = await asyncio.wait_for(poll, 5.0)
        assert [r.value for r in got] == [b"k:0", b"k:1"]


async def test_a_consumer_whose_connection_is_killed_reconnects_without_loss(
    postgres_database: str,
) -> None:
    log = PostgresMessageLog(postgres_database)
    async with log.consumer("g", [TOPIC]) as consumer, log.producer() as producer:
        await producer.append(records_of(TOPIC, b"k", 4), timeout=APPEND_TIMEOUT)
        first = await consume(consumer, 2, batch=2)
        async with await psycopg.AsyncConnection.connect(
            postgres_database, autocommit=True
        ) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = %s",
                (CONSUMER_APPLICATION,),
            )
        with pytest.raises(Unavailable):
            await consumer.poll_batch(10, max_wait=0)
        await producer.append(records_of(TOPIC, b"k", 1, start=4), timeout=APPEND_TIMEOUT)
        rest = await consume(consumer, 3)
        assert [r.value for r in first + rest] == [r.value for r in records_of(TOPIC, b"k", 5)]


async def test_producers_and_consumers_create_the_schema_in_any_order_at_once(
    postgres_database: str,
) -> None:
    log = PostgresMessageLog(postgres_database)
    consumers = [log.consumer(f"g{n}", [TOPIC]) for n in range(4)]
    producers = [log.producer() for _ in range(4)]
    try:
        await asyncio.gather(
            *(c.lag() for c in consumers),
            *(p.append(records_of(TOPIC, b"k", 1), APPEND_TIMEOUT) for p in producers),
        )
        assert [await c.lag() for c in consumers] == [4] * 4
    finally:
        for opened in [*consumers, *producers]:
            await opened.close()


async def test_eraser_deletes_every_record_of_the_conversations_on_every_topic(
    postgres_database: str,
) -> None:
    eraser = PostgresLogEraser(postgres_database)
    # Before the log's first use there are no tables, and nothing to erase.
    assert await eraser.erase_conversations(["c1"]) == {"log_records": 0}
    log = PostgresMessageLog(postgres_database)
    async with log.producer() as producer:
        await producer.append(
            records_of(TOPIC, b"c1", 2) + records_of(TOPIC, b"c2", 1), APPEND_TIMEOUT
        )
        await producer.append(records_of("chatplane.handoff", b"c1", 1), APPEND_TIMEOUT)

    assert await eraser.erase_conversations(["c1", ""]) == {"log_records": 3}
    assert await eraser.erase_conversations(["c1"]) == {"log_records": 0}

    async with log.consumer("g", [TOPIC, "chatplane.handoff"]) as consumer:
        got = await consumer.poll_batch(10, max_wait=0.2)
        assert [(r.topic, r.offset, r.value) for r in got] == [(TOPIC, 2, b"c2:0")]
    # Offsets are never reused after an erasure.
    async with log.producer() as producer:
        await producer.append(records_of(TOPIC, b"c3", 1), APPEND_TIMEOUT)
    async with log.consumer("g2", [TOPIC]) as consumer:
        got = await consumer.poll_batch(10, max_wait=0.2)
        assert [r.offset for r in got] == [2, 3]

"""Kafka-only behaviour of chatplane.log.kafka, beyond the shared contract: rebalances within a
consumer group, headers, and an unreachable cluster. Runs on the session's broker (the
`engines` fixture), which it never stops; each test has its own topic and group."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from chatplane.common.errors import Unavailable
from chatplane.log import ConsumedRecord, LogRecord, MessageLogConsumer
from chatplane.log.kafka import KafkaMessageLog
from tests.engine_processes import Engines

PARTITIONS = 6
SESSION_TIMEOUT = 6.0


@pytest.fixture
def bootstrap(engines: Engines) -> str:
    return engines.env["CHATPLANE_KAFKA_BOOTSTRAP"]


@pytest.fixture
def topic() -> str:
    return f"test.{uuid.uuid4().hex}"


@pytest.fixture
def group() -> str:
    return f"group-{uuid.uuid4().hex}"


@pytest.fixture
async def kafka_log(bootstrap: str) -> AsyncIterator[KafkaMessageLog]:
    yield KafkaMessageLog(bootstrap, partitions=PARTITIONS, session_timeout=SESSION_TIMEOUT)


class Store:
    """What a consumer has processed, like the idempotent store behind Persistence."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self.seen: Counter[bytes] = Counter()
        self.offsets: dict[int, set[int]] = defaultdict(set)
        self._topic = topic
        self._group = group
        self._admin = AdminClient({"bootstrap.servers": bootstrap})

    def process(self, batch: Sequence[ConsumedRecord]) -> None:
        for record in batch:
            self.seen[record.value] += 1
            self.offsets[record.partition].add(record.offset)

    def committed(self) -> dict[int, int]:
        """The group's committed offsets as the broker has them (-1: none)."""
        request = ConsumerGroupTopicPartitions(
            self._group, [TopicPartition(self._topic, p) for p in range(PARTITIONS)]
        )
        result = self._admin.list_consumer_group_offsets([request])[self._group].result(10)
        return {tp.partition: tp.offset for tp in result.topic_partitions or ()}

    async def assert_commits_skip_nothing(self) -> None:
        """Every committed offset has all records before it processed."""
        for partition, offset in (await asyncio.to_thread(self.committed)).items():
            missing = set(range(max(offset, 0))) - self.offsets[partition]
            assert not missing, f"partition {partition} committed {offset} past {sorted(missing)}"


async def commit_retrying(consumer: MessageLogConsumer, batch: Sequence[ConsumedRecord]) -> None:
    """As the Persistence consumer does: a commit refused while the group changes is retried."""
    for _ in range(50):
        try:
            await consumer.commit(batch)
            return
        except Unavailable:
            await asyncio.sleep(0.1)
    raise AssertionError("the commit never succeeded")


async def test_rebalance_delivers_every_record_at_least_once(
    kafka_log: KafkaMessageLog,
    bootstrap: str,
    topic: str,
    group: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="chatplane.log.kafka")
    sent = [
        LogRecord(topic, f"conversation-{i % 60}".encode(), f"message-{i}".encode())
        for i in range(1800)
    ]
    store = Store(bootstrap, topic, group)
    first = kafka_log.consumer(group, [topic])
    second = kafka_log.consumer(group, [topic])
    first_left = asyncio.Event()
    seen_by_second_before_first_left = 0

    async def run_second() -> None:
        nonlocal seen_by_second_before_first_left
        give_up = time.monotonic() + 40
        # Until the second has taken over and committed everything the first left.
        while not (first_left.is_set() and await second.lag() == 0):
            assert time.monotonic() < give_up, f"{len(store.seen)} of {len(sent)} processed"
            batch = await second.poll_batch(100, 0.2)
            store.process(batch)
            if not first_left.is_set():
                seen_by_second_before_first_left += len(batch)
            await commit_retrying(second, batch)
            await store.assert_commits_skip_nothing()

    try:
        async with kafka_log.producer() as producer:
            # ~200 records per partition; the first consumer has them all to itself.
            await producer.append(sent[:1200], timeout=10)
            first_batch = await first.poll_batch(100, 5.0)
            store.process(first_batch)
            await first.commit(first_batch)
            await store.assert_commits_skip_nothing()
            # 700 records span at least 4 partitions, so some of them will be revoked.
            processed_not_committed = await first.poll_batch(700, 5.0)
            store.process(processed_not_committed)

            # The second member joins while the first keeps polling: the long poll serves the
            # rebalance, which moves half of the first's partitions to the second.
            second_task = asyncio.create_task(run_second())
            await producer.append(sent[1200:], timeout=10)
            last_batch = await first.poll_batch(5000, 3.0)
        # The earlier batch covers partitions the first no longer owns: those offsets are
        # skipped (their new owner reads the records again), the rest are committed.
        await first.commit(processed_not_committed)
        await store.assert_commits_skip_nothing()
        assert "commit skipped for partitions no longer assigned" in caplog.messages
        store.process(last_batch)
        await first.close()  # leaves without committing its last batch
        first_left.set()
        await second_task

        assert set(store.seen) == {r.value for r in sent}
        assert seen_by_second_before_first_left > 0, "no partition moved to the second consumer"
        # Whatever the first processed but did not commit was delivered again.
        assert last_batch
        assert all(store.seen[r.value] >= 2 for r in last_batch)
        committed = await asyncio.to_thread(store.committed)
        for partition, offsets in store.offsets.items():
            assert committed[partition] == max(offsets) + 1
    finally:
        await first.close()
        await second.close()


async def test_consumer_that_stalled_past_max_poll_interval_recovers(
    bootstrap: str, topic: str, group: str
) -> None:
    # A batch that takes longer than max_poll_interval (a database outage) costs the member
    # its partitions. Its commit must not fail forever (only a poll rejoins the group): it
    # is kept for the next poll, which rejoins and gets the uncommitted records again.
    log = KafkaMessageLog(
        bootstrap,
        partitions=PARTITIONS,
        session_timeout=SESSION_TIMEOUT,
        max_poll_interval=SESSION_TIMEOUT,
    )
    sent = [LogRecord(topic, f"conversation-{i}".encode(), b"%d" % i) for i in range(12)]
    async with log.producer() as producer:
        await producer.append(sent, timeout=10)
    async with log.consumer(group, [topic]) as consumer:
        batch = await consumer.poll_batch(len(sent), 5.0)
        assert len(batch) == len(sent)
        await asyncio.sleep(SESSION_TIMEOUT + 1.5)  # "processing", without polling

        await consumer.commit(batch)  # returns: nothing to retry until the next poll
        assert await consumer.lag() == len(sent)
        again: list[ConsumedRecord] = []
        give_up = time.monotonic() + 10
        while len(again) < len(sent):
            assert time.monotonic() < give_up, f"{len(again)} delivered again"
            again += await consumer.poll_batch(len(sent) - len(again), 0.2)
        assert sorted(r.value for r in again) == sorted(r.value for r in sent)
        await consumer.commit(again)
        assert await consumer.lag() == 0


async def test_a_cancelled_poll_leaves_its_records_to_the_next(
    kafka_log: KafkaMessageLog, topic: str, group: str
) -> None:
    # Persistence cancels a poll under way when it stops; records the worker thread had
    # already taken from librdkafka must not be skipped by the consumer's next poll.
    sent = [LogRecord(topic, b"conversation-1", b"%d" % i) for i in range(5)]
    async with kafka_log.producer() as producer, kafka_log.consumer(group, [topic]) as consumer:
        assert await consumer.poll_batch(1, 0) == []  # joined, nothing there yet
        poll = asyncio.create_task(consumer.poll_batch(100, 10.0))
        await producer.append(sent, timeout=10)
        await asyncio.sleep(0.5)  # the poll has the records and waits for more
        poll.cancel()
        with pytest.raises(asyncio.CancelledError):
            await poll

        got = await consumer.poll_batch(100, 0.5)

    assert [r.value for r in got] == [r.value for r in sent]


async def test_headers_keys_and_values_round_trip(
    kafka_log: KafkaMessageLog, topic: str, group: str
) -> None:
    headers = (
        ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("message-id", b"01J9Z3"),
        ("empty", b""),
        ("dup", b"first"),
        ("dup", b"second"),
        ("bin\u00e4r", bytes(range(256))),
    )
    sent = [
        LogRecord(topic, b"conversation-1", b"with headers", headers),
        LogRecord(topic, b"conversation-1", b"without headers"),
        LogRecord(topic, b"", b""),
    ]
    async with kafka_log.producer() as producer, kafka_log.consumer(group, [topic]) as consumer:
        await producer.append(sent, timeout=10)
        got: list[ConsumedRecord] = []
        give_up = time.monotonic() + 10
        while len(got) < len(sent):
            assert time.monotonic() < give_up
            got += await consumer.poll_batch(len(sent) - len(got), 0.2)

    by_value = {r.value: r for r in got}
    assert by_value[b"with headers"].headers == headers
    assert by_value[b"without headers"].headers == ()
    assert (by_value[b""].key, by_value[b""].headers) == (b"", ())
    # One key, one partition, in append order.
    same_key = [r for r in got if r.key == b"conversation-1"]
    assert [r.value for r in same_key] == [b"with headers", b"without headers"]
    assert same_key[0].partition == same_key[1].partition
    assert same_key[0].offset < same_key[1].offset


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_append_to_an_unreachable_cluster_raises_unavailable_in_time(topic: str) -> None:
    log = KafkaMessageLog(f"127.0.0.1:{closed_port()}", partitions=PARTITIONS)
    async with log.producer() as producer:
        for _ in range(2):  # the first append also tries to create the topic
            started = time.monotonic()
            with pytest.raises(Unavailable):
                await producer.append([LogRecord(topic, b"k", b"v")], timeout=1.0)
            assert time.monotonic() - started < 1.5


async def test_consumer_of_an_unreachable_cluster_polls_nothing_and_lag_fails(
    topic: str, group: str
) -> None:
    log = KafkaMessageLog(
        f"127.0.0.1:{closed_port()}", partitions=PARTITIONS, join_timeout=1.0, request_timeout=1.0
    )
    consumer = log.consumer(group, [topic])
    try:
        for _ in range(2):  # a broker that is down is not an error of the poll
            started = time.monotonic()
            assert await consumer.poll_batch(10, 0.2) == []
            assert time.monotonic() - started < 2.0
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await consumer.lag()
        assert time.monotonic() - started < 2.0
    finally:
        started = time.monotonic()
        await consumer.close()
        assert time.monotonic() - started < 2.0

"""Contract tests of the message log: every implementation of chatplane.log.base must pass them.

Each implementation is one entry of IMPLEMENTATIONS; the tests use only the interface, plus
a snippet of Python that opens the same log in a child process for the multi-process cases.
The PostgreSQL entry gets a fresh database per test (the `postgres_database` fixture); the
Kafka entry uses the session's broker (the `engines` fixture), so every test names its own
topics and groups.

Order is promised per key (Kafka: per partition), never across keys, so the tests check it
per key, and offsets per partition.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from chatplane.common.errors import Unavailable
from chatplane.log import (
    ConsumedRecord,
    LogRecord,
    MessageLog,
    MessageLogConsumer,
    MessageLogProducer,
    PostgresMessageLog,
)
from chatplane.log.kafka import KafkaMessageLog
from tests.engine_processes import Engines

REPO = Path(__file__).resolve().parents[2]
APPEND_TIMEOUT = 5.0


@dataclass
class LogUnderTest:
    """The log a test runs against: hands out producers/consumers and closes them afterwards."""

    log: MessageLog
    # Python source that binds `log` to the same log in another process.
    child_setup: str
    # How long a killed consumer keeps its records from the rest of its group (Kafka's
    # session timeout: the group waits that long before it reassigns the partitions).
    member_timeout: float = 0.0
    opened: list[MessageLogProducer | MessageLogConsumer] = field(default_factory=list)

    def producer(self) -> MessageLogProducer:
        producer = self.log.producer()
        self.opened.append(producer)
        return producer

    def consumer(self, group: str, topics: Sequence[str]) -> MessageLogConsumer:
        consumer = self.log.consumer(group, topics)
        self.opened.append(consumer)
        return consumer

    async def close(self) -> None:
        for opened in reversed(self.opened):
            await opened.close()


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> LogUnderTest:
    dsn: str = request.getfixturevalue("postgres_database")
    setup = f"from chatplane.log import PostgresMessageLog\nlog = PostgresMessageLog({dsn!r})"
    return LogUnderTest(PostgresMessageLog(dsn), setup)


KAFKA_PARTITIONS = 6
# The broker's smallest allowed session (group.min.session.timeout.ms): a killed consumer's
# partitions move to the rest of its group after this long.
KAFKA_SESSION_TIMEOUT = 6.0


@pytest.fixture(scope="session")
def kafka_bootstrap(engines: Engines) -> str:
    """The session's broker, once a first consumer group has joined it. That creates the
    group coordinator's topic (50 partitions), which takes seconds while the other engines
    are still starting, and would otherwise count against the first Kafka test's deadlines."""
    bootstrap = engines.env["CHATPLANE_KAFKA_BOOTSTRAP"]
    topic = f"test.warm-up.{uuid.uuid4().hex}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1)])[topic].result(60)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    producer.produce(topic, b"warm-up")
    assert producer.flush(60) == 0, "the broker did not take a record within 60 s"
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"warm-up-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([topic])
        give_up = time.monotonic() + 60
        while (message := consumer.poll(0.5)) is None or message.error() is not None:
            assert time.monotonic() < give_up, "no consumer group could join within 60 s"
    finally:
        consumer.close()
    return bootstrap


def _kafka(request: pytest.FixtureRequest, tmp_path: Path) -> LogUnderTest:
    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    arguments = f"partitions={KAFKA_PARTITIONS}, session_timeout={KAFKA_SESSION_TIMEOUT}"
    setup = (
        "from chatplane.log.kafka import KafkaMessageLog\n"
        f"log = KafkaMessageLog({bootstrap!r}, {arguments})"
    )
    log = KafkaMessageLog(
        bootstrap, partitions=KAFKA_PARTITIONS, session_timeout=KAFKA_SESSION_TIMEOUT
    )
    return LogUnderTest(log, setup, member_timeout=KAFKA_SESSION_TIMEOUT)


IMPLEMENTATIONS: dict[str, Callable[[pytest.FixtureRequest, Path], LogUnderTest]] = {
    "kafka": _kafka,
    "postgres": _postgres,
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
async def message_log(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[LogUnderTest]:
    under_test = IMPLEMENTATIONS[request.param](request, tmp_path)
    yield under_test
    await under_test.close()


@pytest.fixture
def topic() -> str:
    # Unique names, so that tests can share one broker when the log is a real cluster.
    return f"test.{uuid.uuid4().hex}"


@pytest.fixture
def group() -> str:
    return f"group-{uuid.uuid4().hex}"


def records_of(topic: str, key: bytes, count: int, start: int = 0) -> list[LogRecord]:
    return [
        LogRecord(topic, key, f"{key.decode()}:{i}".encode()) for i in range(start, start + count)
    ]


async def consume(
    consumer: MessageLogConsumer, count: int, deadline: float = 4.0, batch: int = 500
) -> list[ConsumedRecord]:
    """Polls until `count` records have arrived; fails if that takes longer than `deadline`."""
    got: list[ConsumedRecord] = []
    give_up = time.monotonic() + deadline
    while len(got) < count:
        assert time.monotonic() < give_up, f"got {len(got)} of {count} records"
        got += await consumer.poll_batch(min(batch, count - len(got)), 0.1)
    return got


def child_env() -> dict[str, str]:
    paths = [str(REPO / "services"), str(REPO / "gen" / "python")]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


async def start_child(under_test: LogUnderTest, body: str) -> asyncio.subprocess.Process:
    code = "\n".join(
        [
            "import asyncio",
            "from chatplane.log import LogRecord",
            under_test.child_setup,
            textwrap.dedent(body),
        ]
    )
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, env=child_env(), stdout=asyncio.subprocess.PIPE
    )


async def test_append_then_poll_returns_records_intact_in_order(
    message_log: LogUnderTest, topic: str, group: str
) -> None:
    sent = [
        LogRecord(topic, b"conversation-1", b"first", (("message-id", b"m1"), ("trace", b""))),
        LogRecord(topic, b"conversation-2", b"\x00\xff binary \x80"),
        LogRecord(topic, b"", b"", (("dup", b"a"), ("dup", b"b"))),
    ]
    before_ms = time.time_ns() // 1_000_000
    producer = message_log.producer()
    await producer.append(sent, timeout=APPEND_TIMEOUT)
    after_ms = time.time_ns() // 1_000_000

    got = await message_log.consumer(group, [topic]).poll_batch(len(sent), max_wait=2.0)

    # Three keys: in Kafka they may land on three partitions, with no order among them.
    assert sorted((r.topic, r.key, r.value, r.headers) for r in got) == sorted(
        (s.topic, s.key, s.value, s.headers) for s in sent
    )
    for partition in {r.partition for r in got}:
        offsets = [r.offset for r in got if r.partition == partition]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert all(before_ms - 1000 <= r.timestamp_ms <= after_ms + 1000 for r in got)


async def test_per_key_order_holds_under_concurrent_appends(
    message_log: LogUnderTest, topic: str, group: str
) -> None:
    producer = message_log.producer()
    tasks, appends, per_append = 8, 25, 3

    async def append_conversation(task: int) -> None:
        key = f"conversation-{task}".encode()
        for n in range(appends):
            batch = records_of(topic, key, per_append, start=n * per_append)
            await producer.append(batch, timeout=APPEND_TIMEOUT)

    await asyncio.gather(*(append_conversation(task) for task in range(tasks)))
    got = await consume(message_log.consumer(group, [topic]), tasks * appends * per_append)

    by_key: dict[bytes, list[bytes]] = {}
    for record in got:
        by_key.setdefault(record.key, []).append(record.value)
    for key, values in by_key.items():
        assert values == [r.value for r in records_of(topic, key, appends * per_append)]
    assert len(by_key) == tasks


async def test_poll_returns_at_most_max_records(
    message_log: LogUnderTest, topic: str, group: str
) -> None:
    await message_log.producer().append(records_of(topic, b"k", 10), timeout=APPEND_TIMEOUT)
    consumer = message_log.consumer(group, [topic])

    sizes = [len(await consumer.poll_batch(4, max_wait=0.2)) for _ in range(4)]

    assert sizes == [4, 4, 2, 0]


async def test_poll_waits_max_wait_when_the_log_is_empty(
    message_log: LogUnderTest, topic: str, group: str
) -> None:
    consumer = message_log.consumer(group, [topic])
    await consumer.poll_batch(1, max_wait=0)  # the first poll may pay for connecting
    max_wait = 0.3

    started = time.monotonic()
    got = await consumer.poll_batch(10, max_wait=max_wait)
    elapsed = time.monotonic() - started

    assert got == []
    assert max_wait * 0.8 <= elapsed < max_wait + 0.2


async def test_poll_waits_max_wait_for_a_partial_batch(
    message_log: LogUnderTest, topic: str, group: str
) -> None:
    await message_log.producer().append(records_of(topic, b"k", 2), timeout=APPEND_TIMEOUT)
    consumer = message_log.consumer(group, [topic])
    max_wait = 0.3

    started = time.monotonic()
    got = await consumer.poll_batch(10, max_wait=max_wait)
    elapsed = time.monotonic() - started

    assert len(got) == 2
    assert max_wait * 0.8 <= elapsed < max_wait + 0.5


async def test_poll_returns_as_soon_as_max_records_arrive(
    message_log: LogUnderTest, topic: str, group: str
) -> None:
    consumer = message_log.consumer(group, [topic])
    await consumer.poll_batch(1, max_wait=0)
    producer = message_log.producer()
    await producer.append(records_of(topic, b"warm-up", 1), timeout=APPEND_TIMEOUT)
    await consume(consumer, 1)

    started = time.monotonic()
    poll = asyncio.create_task(consumer.poll_batch(5, max_wait=10.0))
    await producer.append(records_of(topic, b"k", 5), timeout=APPEND_TIMEOUT)
    got = await poll
    elapsed = time.monotonic() - started

    assert [r.value for r in got] == [r.value for r in records_of(topic, b"k", 5)]
    assert elapsed < 1.0


async def test_new_consumer_of_a_group_resumes_after_the_commit(
    message_log: LogUnderTest, topic: str, group: str
) -> None:
    sent = records_of(topic, b"k", 6)
    await message_log.producer().append(sent, timeout=APPEND_TIMEOUT)
    first = message_log.consumer(group, [topic])
    processed = await consume(first, 4)
    await first.commit(processed)
    await first.close()

    resumed = await consume(message_log.consumer(group, [topic]), 2)

    assert [r.value for r in resumed] == [r.value for r in sent[4:]]
    assert resumed[0].offset > processed[-1].offset


async def test_uncommitted_records_are_delivered_again_to_the_group(
    message_log: LogUnderTest, topic: str, group: str
) -> None:
    sent = records_of(topic, b"k", 6)
    await message_log.producer().append(sent, timeout=APPEND_TIMEOUT)
    crashed = message_log.consumer(group, [topic])
    await crashed.commit(await consume(crashed, 2))
    lost = await consume(crashed, 4)
    await crashed.close()  # gone without committing `lost`, as in a crash

    again = await consume(message_log.consumer(group, [topic]), 4)

    assert [(r.offset, r.value) for r in again] == [(r.offset, r.value) for r in lost]


async def test_groups_are_independent(message_log: LogUnderTest, topic: str, group: str) -> None:
    sent = records_of(topic, b"k", 5)
    await message_log.producer().append(sent, timeout=APPEND_TIMEOUT)
    persistence = message_log.consumer(f"{group}-persistence", [topic])
    await persistence.commit(await consume(persistence, 5))

    analytics = message_log.consumer(f"{group}-analytics", [topic])
    got = await consume(analytics, 5)

    assert [r.value for r in got] == [r.value for r in sent]
    assert await persistence.lag() == 0
    assert await analytics.lag() == 5


async def test_lag_counts_uncommitted_records_of_all_topics(
    message_log: LogUnderTest, topic: str, group: str
) -> None:
    other = f"{topic}.other"
    consumer = message_log.consumer(group, [topic, other])
    assert await consumer.lag() == 0
    producer = message_log.producer()
    await producer.append(records_of(topic, b"k", 3) + records_of(other, b"k", 4), APPEND_TIMEOUT)
    assert await consumer.lag() == 7

    got = await consume(consumer, 7)
    assert await consumer.lag() == 7  # polling alone commits nothing
    await consumer.commit([r for r in got if r.topic == topic])
    assert await consumer.lag() == 4
    await consumer.commit(got)
    assert await consumer.lag() == 0


async def test_closed_producer_refuses_appends(message_log: LogUnderTest, topic: str) -> None:
    producer = message_log.producer()
    await producer.close()

    with pytest.raises(Unavailable):
        await producer.append(records_of(topic, b"k", 1), timeout=APPEND_TIMEOUT)


async def test_records_appended_by_other_processes_are_seen_once_in_order(
    message_log: LogUnderTest, topic: str, group: str
) -> None:
    children, per_child, per_append = 2, 2000, 100
    consumer = message_log.consumer(group, [topic])
    await consumer.poll_batch(1, max_wait=0)
    producers = [
        await start_child(
            message_log,
            f"""
            async def main() -> None:
                async with log.producer() as producer:
                    for start in range(0, {per_child}, {per_append}):
                        await producer.append(
                            [LogRecord({topic!r}, b"child-{child}", b"%d" % i)
                             for i in range(start, start + {per_append})],
                            timeout=10,
                        )
            asyncio.run(main())
            """,
        )
        for child in range(children)
    ]

    got: list[ConsumedRecord] = []
    give_up = time.monotonic() + 4.5
    while len(got) < children * per_child:
        assert time.monotonic() < give_up, f"got {len(got)} records"
        batch = await consumer.poll_batch(500, max_wait=0.05)
        await consumer.commit(batch)
        got += batch
    assert [await child.wait() for child in producers] == [0] * children

    for child in range(children):
        values = [r.value for r in got if r.key == f"child-{child}".encode()]
        assert values == [b"%d" % i for i in range(per_child)]
    for partition in {r.partition for r in got}:
        offsets = [r.offset for r in got if r.partition == partition]
        assert offsets == sorted(set(offsets))
    assert await consumer.lag() == 0
    assert await message_log.consumer(group, [topic]).poll_batch(1, max_wait=0.1) == []


async def test_consumer_killed_before_commit_leaves_its_records_to_the_next(
    message_log: LogUnderTest, topic: str, group: str
) -> None:
    sent = records_of(topic, b"k", 300)
    await message_log.producer().append(sent, timeout=APPEND_TIMEOUT)
    child = await start_child(
        message_log,
        f"""
        async def main() -> None:
            consumer = log.consumer({group!r}, [{topic!r}])
            await consumer.commit(await consumer.poll_batch(100, 5.0))
            polled = await consumer.poll_batch(100, 5.0)
            print(len(polled), flush=True)
            await asyncio.sleep(3600)
        asyncio.run(main())
        """,
    )
    assert child.stdout is not None
    try:
        line = await asyncio.wait_for(child.stdout.readline(), timeout=4.0)
        assert line.strip() == b"100"
    finally:
        child.send_signal(signal.SIGKILL)
        assert await child.wait() == -signal.SIGKILL

    successor = message_log.consumer(group, [topic])
    assert await successor.lag() == 200
    got = await consume(successor, 200, deadline=4.0 + message_log.member_timeout)
    assert [r.value for r in got] == [r.value for r in sent[100:]]

"""What the cluster-profile fault tests share: their own engines (so stopping one never
disturbs other tests), direct access to PostgreSQL and Kafka for checking, and records."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
from confluent_kafka import Consumer, TopicPartition

from chatplane.common.ids import new_id
from chatplane.common.topics import MESSAGE_SCHEMA_VERSION, MESSAGES_TOPIC
from chatplane.internal.v1 import events_pb2
from chatplane.log import LogRecord
from chatplane.v1 import resources_pb2
from tests.engine_processes import ENGINES_PY, Engines, load_engines

PERSISTENCE_GROUP = "chatplane-persistence"


def start_engines(state_dir: Path) -> Engines:
    """Starts PostgreSQL, Kafka and OpenSearch of its own in `state_dir`."""
    proc = subprocess.run(
        [sys.executable, str(ENGINES_PY), "up", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"engines up failed:\n{proc.stderr[-4000:]}")
    return load_engines(state_dir)


def stop_engines(engines: Engines) -> None:
    engines.cli("down")


def cluster_env(engines: Engines, **extra: str) -> dict[str, str]:
    """Settings of a stack in the cluster profile on these engines."""
    return {"CHATPLANE_PROFILE": "cluster", **engines.env, **extra}


def message_record(tenant: str, conversation_id: str, index: int) -> LogRecord:
    """A well-formed MessageRecorded record of ~300 bytes."""
    message = resources_pb2.Message(
        message_id=new_id(),
        conversation_id=conversation_id,
        role=resources_pb2.ROLE_USER if index % 2 == 0 else resources_pb2.ROLE_ASSISTANT,
        text=f"message {index} " + "lorem ipsum dolor sit amet " * 8,
        status=resources_pb2.MESSAGE_STATUS_COMPLETE,
    )
    message.create_time.FromMilliseconds(int(time.time() * 1000))
    value = events_pb2.MessageRecorded(
        schema_version=MESSAGE_SCHEMA_VERSION, tenant_id=tenant, user_id="u", message=message
    ).SerializeToString()
    return LogRecord(topic=MESSAGES_TOPIC, key=conversation_id.encode(), value=value)


def rows_of_tenant(dsn: str, tenant: str) -> tuple[int, int]:
    """(rows, distinct message ids) stored for a tenant."""
    with psycopg.connect(dsn, connect_timeout=5) as connection:
        row = connection.execute(
            "SELECT count(*), count(DISTINCT message_id) FROM messages WHERE tenant_id = %s",
            (tenant,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def stored_message_ids(dsn: str, message_ids: Sequence[str]) -> list[str]:
    """The ids among `message_ids` stored, with repeats (there must be none)."""
    with psycopg.connect(dsn, connect_timeout=5) as connection:
        rows = connection.execute(
            "SELECT message_id FROM messages WHERE message_id = ANY(%s)", (list(message_ids),)
        ).fetchall()
    return [r[0] for r in rows]


def consumer_lag(bootstrap: str, group: str, topic: str) -> int:
    """Records of `topic` not yet committed by `group` (without joining the group)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = [TopicPartition(topic, p) for p in metadata.topics[topic].partitions]
        committed = consumer.committed(partitions, timeout=10)
        lag = 0
        for partition in committed:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition.partition), timeout=10
            )
            position = partition.offset if partition.offset >= 0 else low
            lag += max(0, high - position)
        return lag
    finally:
        consumer.close()


def commit_end(bootstrap: str, group: str, topic: str) -> None:
    """Commits `group`'s offsets at the end of every partition of `topic` (without joining
    the group): the group skips what earlier tests left on the shared engines."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        found = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if found is None or found.error is not None:
            return  # no topic yet: nothing to skip
        ends = [
            TopicPartition(topic, p, consumer.get_watermark_offsets(part, timeout=10)[1])
            for p, part in ((p, TopicPartition(topic, p)) for p in found.partitions)
        ]
        if ends:
            consumer.commit(offsets=ends, asynchronous=False)
    finally:
        consumer.close()


def topic_values(bootstrap: str, topic: str, marker: bytes, timeout: float = 30) -> list[bytes]:
    """Every value of `topic` containing `marker`, read from the beginning."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-reader-{new_id()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    found: list[bytes] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        idle_since = time.monotonic()
        while time.monotonic() < deadline:
            messages = consumer.consume(500, timeout=0.5)
            if messages:
                idle_since = time.monotonic()
            for message in messages:
                value = message.value()
                if message.error() is None and value is not None and marker in value:
                    found.append(value)
            at_end = all(
                consumer.get_watermark_offsets(tp, timeout=5)[1] <= max(tp.offset, 0)
                for tp in consumer.position(consumer.assignment())
            )
            if consumer.assignment() and at_end and time.monotonic() - idle_since > 1:
                break
        return found
    finally:
        consumer.close()


async def wait_for(predicate, timeout: float, interval: float = 0.2):  # type: ignore[no-untyped-def]
    """Polls a blocking predicate in a thread until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def chunks(items: Sequence[LogRecord], size: int) -> Iterator[Sequence[LogRecord]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

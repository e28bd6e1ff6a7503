"""Failure behaviour of the cluster profile on real Kafka, PostgreSQL and OpenSearch: crashed
consumers, a stopped broker, a stopped database, a stopped search engine and malformed
records. These tests run engines of their own, since they stop them."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from chatplane.common.ids import new_id
from chatplane.common.topics import MESSAGES_DLQ_TOPIC, MESSAGES_TOPIC
from chatplane.launcher import Stack
from chatplane.log import LogRecord
from chatplane.log.kafka import KafkaMessageLog
from chatplane.memory.turn_indexer import CONSUMER_GROUP as MEMORY_GROUP
from tests.cluster.cluster_fixtures import (
    PERSISTENCE_GROUP,
    chunks,
    cluster_env,
    commit_end,
    consumer_lag,
    message_record,
    rows_of_tenant,
    start_engines,
    stop_engines,
    stored_message_ids,
    topic_values,
    wait_for,
)
from tests.engine_processes import Engines
from tests.integration.stack_client import (
    FAST_PACE,
    Client,
    Turn,
    create_key,
    running_stack,
    wait_until_indexed,
)

pytestmark = pytest.mark.engines


@pytest.fixture(scope="module")
def fault_engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    engines = start_engines(tmp_path_factory.mktemp("fault-engines"))
    try:
        yield engines
    finally:
        stop_engines(engines)


def persistence_only(data_dir: Path, engines: Engines) -> Stack:
    return Stack(
        data_dir=data_dir,
        ports={"persistence": 0},
        env={**os.environ, **cluster_env(engines, CHATPLANE_BATCH_MAX_RECORDS="500")},
    )


async def produce(engines: Engines, records: list[LogRecord], pace_seconds: float = 0.0) -> None:
    producer = KafkaMessageLog(engines.env["CHATPLANE_KAFKA_BOOTSTRAP"], partitions=6).producer()
    try:
        for batch in chunks(records, 200):
            await producer.append(batch, timeout=30)
            if pace_seconds:
                await asyncio.sleep(pace_seconds)
    finally:
        await producer.close()


async def test_five_consumer_crashes_lose_and_duplicate_nothing(
    fault_engines: Engines, tmp_path: Path
) -> None:
    tenant = f"crash-{new_id()}"
    conversations = [new_id() for _ in range(20)]
    records = [message_record(tenant, conversations[i % 20], i) for i in range(10_000)]
    stack = persistence_only(tmp_path, fault_engines)
    await stack.start_service("persistence")
    try:
        flow = asyncio.ensure_future(produce(fault_engines, records, pace_seconds=0.05))
        rng = random.Random(7)
        for _ in range(5):
            await asyncio.sleep(rng.uniform(0.2, 1.0))  # a random point, not a readiness wait
            stack.services["persistence"].kill()
            await stack.services["persistence"].process.wait()
            await stack.start_service("persistence")
        await flow
        dsn = fault_engines.env["CHATPLANE_POSTGRES_DSN"]
        bootstrap = fault_engines.env["CHATPLANE_KAFKA_BOOTSTRAP"]
        await wait_for(lambda: rows_of_tenant(dsn, tenant)[0] >= 10_000, timeout=120)
        assert rows_of_tenant(dsn, tenant) == (10_000, 10_000)
        await wait_for(
            lambda: consumer_lag(bootstrap, PERSISTENCE_GROUP, MESSAGES_TOPIC) == 0, timeout=60
        )
    finally:
        await stack.stop(timeout=15)


async def test_malformed_records_go_to_the_dead_letter_topic(
    fault_engines: Engines, tmp_path: Path
) -> None:
    tenant = f"dlq-{new_id()}"
    marker = f"garbage-{new_id()}".encode()
    conversation = new_id()
    records: list[LogRecord] = []
    for i in range(10_000):
        if i % 100 == 50:
            records.append(
                LogRecord(topic=MESSAGES_TOPIC, key=conversation.encode(), value=b"\xff" + marker)
            )
        else:
            records.append(message_record(tenant, conversation, i))
    stack = persistence_only(tmp_path, fault_engines)
    await stack.start_service("persistence")
    try:
        await produce(fault_engines, records)
        dsn = fault_engines.env["CHATPLANE_POSTGRES_DSN"]
        await wait_for(lambda: rows_of_tenant(dsn, tenant)[0] >= 9_900, timeout=120)
        assert rows_of_tenant(dsn, tenant) == (9_900, 9_900)
        bootstrap = fault_engines.env["CHATPLANE_KAFKA_BOOTSTRAP"]
        dead = await asyncio.to_thread(topic_values, bootstrap, MESSAGES_DLQ_TOPIC, marker)
        assert len(dead) == 100
        assert stack.services["persistence"].process.returncode is None  # no crash
    finally:
        await stack.stop(timeout=15)


async def test_postgres_stopped_mid_batch_loses_nothing(
    fault_engines: Engines, tmp_path: Path
) -> None:
    tenant = f"pgdown-{new_id()}"
    records = [message_record(tenant, new_id(), i) for i in range(6_000)]
    stack = persistence_only(tmp_path, fault_engines)
    await stack.start_service("persistence")
    dsn = fault_engines.env["CHATPLANE_POSTGRES_DSN"]
    try:
        flow = asyncio.ensure_future(produce(fault_engines, records, pace_seconds=0.02))
        await wait_for(lambda: rows_of_tenant(dsn, tenant)[0] >= 500, timeout=60, interval=0.05)
        stopped = await asyncio.to_thread(
            fault_engines.cli, "stop", "postgres", "--keep-data", "--kill"
        )
        assert stopped.returncode == 0, stopped.stderr
        await flow  # the log keeps accepting while the database is down
        started = await asyncio.to_thread(fault_engines.cli, "start", "postgres")
        assert started.returncode == 0, started.stderr
        await wait_for(lambda: rows_of_tenant(dsn, tenant)[0] >= 6_000, timeout=120)
        # Exactly once: no offset was committed past a row that was not committed.
        assert rows_of_tenant(dsn, tenant) == (6_000, 6_000)
        assert stack.services["persistence"].process.returncode is None
    finally:
        await stack.stop(timeout=15)


async def test_kafka_restart_under_load_keeps_every_acknowledged_turn(
    fault_engines: Engines, tmp_path: Path
) -> None:
    env = cluster_env(
        fault_engines,
        **FAST_PACE,
        CHATPLANE_RATE_LIMIT_BURST="10000",
        CHATPLANE_LOG_APPEND_TIMEOUT_SECONDS="5",
    )
    async with (
        running_stack(tmp_path, env) as stack,
        grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
    ):
        client = Client(channel, await create_key(stack, f"kafka-{new_id()}", "u"))
        acknowledged: list[Turn] = []
        failures: list[grpc.StatusCode] = []
        # Users chat until 20 more turns were acknowledged after Kafka came back (not for a
        # fixed time: a restart under a loaded machine can take most of any window).
        done_chatting = asyncio.Event()

        async def user(index: int) -> None:
            while not done_chatting.is_set():
                try:
                    turn = await client.chat(f"user {index} asks about tides")
                except grpc.aio.AioRpcError as error:
                    failures.append(error.code())
                    await asyncio.sleep(0.2)
                    continue
                assert turn.done is not None, "a stream ended without done or an error"
                acknowledged.append(turn)

        users = asyncio.ensure_future(asyncio.gather(*(user(i) for i in range(20))))
        await wait_for(lambda: len(acknowledged) >= 20, timeout=60, interval=0.05)
        stopped = await asyncio.to_thread(
            fault_engines.cli, "stop", "kafka", "--keep-data", "--kill"
        )
        assert stopped.returncode == 0, stopped.stderr
        await asyncio.sleep(3)  # the outage itself
        started = await asyncio.to_thread(fault_engines.cli, "start", "kafka")
        assert started.returncode == 0, started.stderr
        after_restart = len(acknowledged)
        await wait_for(lambda: len(acknowledged) >= after_restart + 20, timeout=120, interval=0.05)
        done_chatting.set()
        await users

        assert len(acknowledged) >= 40
        assert set(failures) <= {grpc.StatusCode.UNAVAILABLE}
        ids: list[str] = []
        for turn in acknowledged:
            assert turn.started is not None
            ids += [turn.started.started.user_message_id, turn.started.started.assistant_message_id]
        dsn = fault_engines.env["CHATPLANE_POSTGRES_DSN"]
        await wait_for(lambda: len(stored_message_ids(dsn, ids)) >= len(ids), timeout=120)
        stored = stored_message_ids(dsn, ids)
        assert sorted(stored) == sorted(ids)  # every acknowledged message, exactly once


async def test_opensearch_down_degrades_recall_and_reindexes_when_back(
    fault_engines: Engines, tmp_path: Path
) -> None:
    env = cluster_env(fault_engines, **FAST_PACE)
    # Memory's group starts where the earlier tests of this module left the shared topic (tens
    # of thousands of records it would index first): this test is about its own turns only.
    commit_end(fault_engines.env["CHATPLANE_KAFKA_BOOTSTRAP"], MEMORY_GROUP, MESSAGES_TOPIC)
    async with (
        running_stack(tmp_path, env) as stack,
        grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
    ):
        tenant = f"os-{new_id()}"
        client = Client(channel, await create_key(stack, tenant, "u"))
        healthy = await client.chat("My favourite colour is vermilion")
        assert healthy.started is not None and not healthy.started.started.memory_degraded

        stopped = await asyncio.to_thread(fault_engines.cli, "stop", "opensearch", "--keep-data")
        assert stopped.returncode == 0, stopped.stderr
        missed = await client.chat("My bicycle is a green Gazelle from 1987")
        assert missed.started is not None and missed.done is not None
        assert missed.started.started.memory_degraded

        started = await asyncio.to_thread(fault_engines.cli, "start", "opensearch")
        assert started.returncode == 0, started.stderr
        missed_id = missed.started.started.user_message_id

        # Memory's consumer group resumes on the log once OpenSearch is back.
        await wait_until_indexed(stack, tenant, "u", "Gazelle bicycle", missed_id, timeout=120)

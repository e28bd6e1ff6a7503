"""Message-log to system-of-record latency: records produced to Kafka at a steady 2,000
messages/s, consumed in batches by the real Persistence process (cluster profile) into
PostgreSQL with durable commits; for each message, the time from the start of its append to
the moment a poller sees its row."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import psycopg

from bench.engines import running_engines
from bench.harness import Options, progress
from bench.persistence import make_durable
from bench.report import Row, Target
from bench.stats import ns_to_ms, percentile
from chatplane.common.ids import new_id
from chatplane.common.topics import MESSAGE_SCHEMA_VERSION, MESSAGES_TOPIC
from chatplane.internal.v1 import events_pb2
from chatplane.launcher import Stack
from chatplane.log import LogRecord
from chatplane.log.kafka import KafkaMessageLog
from chatplane.v1 import resources_pb2

NAME = "pipeline"
TITLE = "pipeline: Kafka produce → visible in PostgreSQL (2,000 messages/s)"
NOTES = (
    "Persistence (cluster profile, default batches: 500 records or 50 ms) consumes a 6-partition "
    "topic into PostgreSQL 15 with fsync, full_page_writes and synchronous_commit on.",
    "Latency = poller's first sight of the row - start of the append that carried it; the poller "
    "queries every 5 ms, so values are up to 5 ms late.",
)
RATE = 2_000
SECONDS = 15
QUICK_SECONDS = 5
TICK = 0.01
_POLL = 0.005
TARGET_P99_MS = 250


def _record(tenant: str, conversation: str, index: int) -> tuple[str, LogRecord]:
    message = resources_pb2.Message(
        message_id=new_id(),
        conversation_id=conversation,
        role=resources_pb2.ROLE_USER,
        text=f"message {index} " + "lorem ipsum dolor sit amet " * 10,
        status=resources_pb2.MESSAGE_STATUS_COMPLETE,
    )
    message.create_time.FromMilliseconds(int(time.time() * 1000))
    value = events_pb2.MessageRecorded(
        schema_version=MESSAGE_SCHEMA_VERSION, tenant_id=tenant, user_id="u", message=message
    ).SerializeToString()
    return message.message_id, LogRecord(MESSAGES_TOPIC, conversation.encode(), value)


async def _observe(dsn: str, sent: dict[str, float], seen: dict[str, float], total: int) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        last = 0
        while len(seen) < total:
            cursor = await connection.execute(
                "SELECT position, message_id FROM messages WHERE position > %s ORDER BY position",
                (last,),
            )
            now = time.perf_counter()
            for position, message_id in await cursor.fetchall():
                last = max(last, position)
                if message_id in sent:
                    seen.setdefault(message_id, now)
            await asyncio.sleep(_POLL)


async def run(options: Options) -> list[Row]:
    seconds = QUICK_SECONDS if options.quick else SECONDS
    total = RATE * seconds
    async with running_engines(options, "postgres,kafka", NAME) as env:
        dsn = env["CHATPLANE_POSTGRES_DSN"]
        await make_durable(dsn)
        stack = Stack(
            data_dir=Path(tempfile.mkdtemp(prefix="chatplane-bench-pipeline-")),
            ports={"persistence": 0},
            env={**os.environ, **env, "CHATPLANE_PROFILE": "cluster", **options.env},
        )
        await stack.start_service("persistence")
        log = KafkaMessageLog(env["CHATPLANE_KAFKA_BOOTSTRAP"], partitions=6)
        producer = log.producer()
        sent: dict[str, float] = {}
        seen: dict[str, float] = {}
        try:
            conversations = [new_id() for _ in range(200)]
            # Warm-up, not measured: the producer's id, the group join, the first batches.
            warm_conversations = [new_id() for _ in range(20)]
            warm = [_record("warm-up", warm_conversations[i % 20], i) for i in range(500)]
            warm_sent = {message_id: 0.0 for message_id, _ in warm}
            warm_seen: dict[str, float] = {}
            await producer.append([r for _, r in warm], timeout=60)
            await asyncio.wait_for(_observe(dsn, warm_sent, warm_seen, len(warm)), timeout=120)
            observer = asyncio.create_task(_observe(dsn, sent, seen, total))
            progress(options, f"{NAME}: producing {total} messages at {RATE}/s")
            per_tick = int(RATE * TICK)
            loop = asyncio.get_running_loop()
            start = loop.time()
            appends: list[asyncio.Task[None]] = []
            for tick in range(total // per_tick):
                batch = [
                    _record("bench", conversations[(tick * per_tick + i) % 200], i)
                    for i in range(per_tick)
                ]
                now = time.perf_counter()
                for message_id, _ in batch:
                    sent[message_id] = now
                appends.append(
                    asyncio.create_task(producer.append([r for _, r in batch], timeout=30))
                )
                delay = start + (tick + 1) * TICK - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await asyncio.gather(*appends)
            await asyncio.wait_for(observer, timeout=120)
        finally:
            await producer.close()
            await stack.stop(timeout=15)
    latencies = [int((seen[m] - sent[m]) * 1e9) for m in sent if m in seen]
    column = f"{RATE}/s"
    return [
        Row(NAME, "messages produced", "", {column: float(total)}, precision=0),
        Row(
            NAME,
            "messages visible in PostgreSQL",
            "",
            {column: float(len(latencies))},
            Target(float(total), op="=="),
            precision=0,
        ),
        Row(NAME, "produce → visible p50", "ms", {column: ns_to_ms(percentile(latencies, 0.5))}),
        Row(
            NAME,
            "produce → visible p99",
            "ms",
            {column: ns_to_ms(percentile(latencies, 0.99))},
            Target(TARGET_P99_MS),
        ),
        Row(NAME, "produce → visible max", "ms", {column: ns_to_ms(max(latencies, default=None))}),
    ]

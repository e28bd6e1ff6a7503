"""Erasure and retention benchmark on the embedded profile (store and message log on one
PostgreSQL): how long the `system_of_record` step of an erasure takes for users with 100, 1,000
and 10,000 stored messages (next to another user of the tenant with 10,000), the `message_log`
step on the embedded log holding their records, and how fast the retention sweep's store part
deletes expired conversations (20 messages each)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.embedded_store import EmbeddedDatabases, embedded_postgres
from bench.harness import Options, progress
from bench.report import Row, Target
from chatplane.common.ids import new_id
from chatplane.common.topics import MESSAGES_TOPIC
from chatplane.log.base import LogRecord
from chatplane.log.postgres import PostgresMessageLog
from chatplane.log.record_erasure import PostgresLogEraser
from chatplane.persistence.store.base import Message, MessageStatus, Owner, Role
from chatplane.persistence.store.postgres import PostgresConversationStore

NAME = "erasure"
TITLE = "erasure: the rows and log steps of EraseUser, and the retention sweep (embedded profile)"
NOTES = (
    "Rows: one transaction deleting the user's feedback, deltas, metrics, handoffs, turns, "
    "messages, conversations and keys; the other user's 10,000 messages stay.",
    "Log: records keyed by the user's conversations deleted from the embedded log's table "
    "(by its key index, then VACUUM); one record per message, as the Agent writes them.",
    "Retention: expire_conversations batches of 200 (conversations of 20 messages).",
)

SIZES = (100, 1000, 10_000)
QUICK_SIZES = (100, 1000)
PER_CONVERSATION = 20
TENANT = "bench-tenant"
# An erasure of a heavy user (10,000 messages) should not hold the store for long.
TARGET_ROWS_10K_MS = 2000.0
_TEXT = "a chat message of about the usual length, asking something about an order " * 2


def _messages(owner: Owner, count: int, at: datetime) -> list[Message]:
    messages: list[Message] = []
    for start in range(0, count, PER_CONVERSATION):
        conversation = new_id()
        for index in range(min(PER_CONVERSATION, count - start)):
            messages.append(
                Message(
                    message_id=new_id(),
                    conversation_id=conversation,
                    owner=owner,
                    role=Role.USER if index % 2 == 0 else Role.ASSISTANT,
                    text=_TEXT,
                    status=MessageStatus.COMPLETE,
                    create_time=at + timedelta(milliseconds=start + index),
                )
            )
    return messages


async def _seed(store: PostgresConversationStore, messages: list[Message]) -> None:
    for start in range(0, len(messages), 500):
        await store.write_messages(messages[start : start + 500])


async def _log(dsn: str, messages: list[Message]) -> None:
    producer = PostgresMessageLog(dsn).producer()
    try:
        records = [
            LogRecord(MESSAGES_TOPIC, m.conversation_id.encode(), _TEXT.encode()) for m in messages
        ]
        for start in range(0, len(records), 1000):
            await producer.append(records[start : start + 1000], timeout=30)
    finally:
        await producer.close()


async def _one_size(
    options: Options, size: int, folder: Path, databases: EmbeddedDatabases
) -> tuple[float, float, float]:
    now = datetime.now(UTC)
    store = await databases.open_store(f"p{size}")
    log_dsn = databases.dsn_of(f"p{size}")
    erased, kept = Owner(TENANT, f"erased-{size}"), Owner(TENANT, "kept")
    erased_messages = _messages(erased, size, now)
    kept_messages = _messages(kept, 10_000, now)
    try:
        await _seed(store, erased_messages + kept_messages)
        await _log(log_dsn, erased_messages + kept_messages)
        progress(options, f"erasing a user with {size} messages")
        started = time.perf_counter()
        removed = await store.erasures.erase_user_rows(erased.tenant_id, erased.user_id)
        rows_ms = (time.perf_counter() - started) * 1000
        assert removed["messages"] == size
        conversations = sorted({m.conversation_id for m in erased_messages})
        started = time.perf_counter()
        logged = await PostgresLogEraser(log_dsn).erase_conversations(conversations)
        log_ms = (time.perf_counter() - started) * 1000
        assert logged["log_records"] == size
        # Retention: every kept conversation is past a 1-day period a year later.
        await store.retention.set(TENANT, 1)
        started = time.perf_counter()
        expired = 0
        while batch := await store.retention.expire(TENANT, now + timedelta(days=365), 200):
            expired += len(batch)
        sweep_s = time.perf_counter() - started
        return rows_ms, log_ms, expired / sweep_s
    finally:
        await store.close()


async def run(options: Options) -> list[Row]:
    sizes = QUICK_SIZES if options.quick else SIZES
    rows: dict[str, float | None] = {}
    logs: dict[str, float | None] = {}
    sweep: dict[str, float | None] = {}
    with (
        tempfile.TemporaryDirectory(prefix="chatplane-bench-erasure-") as folder,
        embedded_postgres(Path(folder)) as databases,
    ):
        for size in sizes:
            rows_ms, log_ms, per_second = await _one_size(options, size, Path(folder), databases)
            rows[f"{size} msgs"], logs[f"{size} msgs"] = rows_ms, log_ms
            sweep[f"{size} msgs"] = per_second
    return [
        Row(
            NAME,
            "system_of_record step (rows)",
            "ms",
            rows,
            Target(TARGET_ROWS_10K_MS, column="10000 msgs") if not options.quick else None,
        ),
        Row(NAME, "message_log step (embedded log)", "ms", logs),
        Row(NAME, "retention: conversations expired per second", "conv/s", sweep, precision=0),
    ]


if __name__ == "__main__":  # pragma: no cover
    print(asyncio.run(run(Options(verbose=True))))

"""Persistence throughput benchmark: how fast the PostgreSQL system of record stores messages
from the log, side by side in one run on one PostgreSQL of its own: the store's batched write
(one transaction per batch: ids looked up under the conversations' locks, then one binary
COPY straight into `messages`) against a baseline of one INSERT per message with autocommit,
issued by the benchmark itself. 100,000 chat
messages of about 300 B (50,000 turns in 2,000 conversations of 200 owners, in log order),
written by one writer, plus the batched COPY by two writers at once (two log partitions).
PostgreSQL runs with production durability (fsync, full_page_writes, synchronous_commit on),
so every commit waits for its WAL flush."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psutil
import psycopg
from psycopg.conninfo import make_conninfo

from bench.engines import running_engines
from bench.harness import Options, progress
from bench.report import Row, Target
from chatplane.common.ids import new_id
from chatplane.persistence.store.base import (
    FinishReason,
    Message,
    MessageStatus,
    Owner,
    Role,
)
from chatplane.persistence.store.postgres import PostgresConversationStore

NAME = "persistence"
TITLE = "persistence: PostgreSQL write throughput (100,000 messages of ~300 B)"

MESSAGES = 100_000
QUICK_MESSAGES = 10_000
CONVERSATIONS = 2_000
OWNERS = 200
TEXT_BYTES = 300
# The consumer's default batch (Settings.batch_max_records).
BATCH = 500
TARGET_ROWS_PER_SECOND = 40_000
TARGET_SPEEDUP = 25
_WORDS = ("the", "of", "order", "kettle", "invoice", "please", "delivery", "account", "why", "is")

COPY = "batched COPY"
ONE_PER_ROW = "one INSERT per row"
COPY_TWO_WRITERS = "batched COPY, 2 writers"

NOTES = (
    f"{COPY} (ids looked up under the locks, then COPY straight into messages): "
    f"PostgresConversationStore.write_messages with batches of "
    f"{BATCH} (the consumer's default), each one transaction with the store's full rules: "
    "advisory locks on the batch's conversations, owner and tombstone checks, new "
    "conversations created, every message id stored once (looked up first), conversation "
    "counters updated",
    f"{ONE_PER_ROW} (the baseline, not a store path): INSERT ... ON CONFLICT (message_id) "
    "DO NOTHING per message, issued by the benchmark with psycopg on an "
    "autocommit connection (a commit each), conversations created beforehand (untimed); it "
    "does less than a batch (no checks, no counters), so the speed-up is a lower bound",
    f"{COPY_TWO_WRITERS}: two stores writing disjoint halves (by conversation, as two log "
    "partitions would) at once",
    "PostgreSQL 15 from scripts/infra/engines.py with fsync, full_page_writes and "
    "synchronous_commit turned on (ALTER SYSTEM): commits are durable, as in production",
    f"targets: >= {TARGET_ROWS_PER_SECOND:,} rows/s is <= "
    f"{1e6 / TARGET_ROWS_PER_SECOND:g} us of wall time per row; >= {TARGET_SPEEDUP}x "
    f"one-per-row is a batched cost of <= {100 / TARGET_SPEEDUP:g} % of one-per-row's",
    "CPU per row: the bench process (client, incl. its event loop) and all PostgreSQL "
    "processes (backends, WAL writer, checkpointer); on a busy machine wall time grows with "
    "the other load, CPU time much less",
)


@dataclass(frozen=True, slots=True)
class Measurement:
    """One run over the whole workload."""

    rows: int
    seconds: float
    client_cpu_seconds: float
    server_cpu_seconds: float | None

    def per_row_us(self, seconds: float | None) -> float | None:
        """`seconds` spread over the rows, in microseconds."""
        return None if seconds is None else seconds / self.rows * 1e6


def workload(count: int, seed: int = 20260101) -> list[Message]:
    """`count` messages in log order: turns (a user message then its answer) of random
    conversations, each conversation of one of OWNERS owners, texts of about TEXT_BYTES."""
    rng = random.Random(seed)
    owners = [Owner(f"tenant-{i % 20}", f"user-{i}") for i in range(OWNERS)]
    conversations = [(new_id(), owners[i % OWNERS]) for i in range(CONVERSATIONS)]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    messages: list[Message] = []
    while len(messages) < count:
        conversation_id, owner = rng.choice(conversations)
        text = " ".join(rng.choice(_WORDS) for _ in range(TEXT_BYTES // 3))[:TEXT_BYTES]
        question = Message(
            message_id=new_id(),
            conversation_id=conversation_id,
            owner=owner,
            role=Role.USER,
            text=text,
            status=MessageStatus.COMPLETE,
            create_time=start + timedelta(milliseconds=len(messages)),
            client_message_id=new_id(),
        )
        answer = Message(
            message_id=new_id(),
            conversation_id=conversation_id,
            owner=owner,
            role=Role.ASSISTANT,
            text=text[::-1],
            status=MessageStatus.COMPLETE,
            create_time=start + timedelta(milliseconds=len(messages) + 1),
            model="offline",
            reply_to_message_id=question.message_id,
            finish_reason=FinishReason.STOP,
            input_tokens=400,
            output_tokens=80,
        )
        messages += [question, answer]
    return messages[:count]


@dataclass
class Postgres:
    """The benchmark's own PostgreSQL: its maintenance DSN and postmaster process."""

    dsn: str
    postmaster: psutil.Process

    def cpu_seconds(self) -> float | None:
        """User + system CPU of the postmaster and all its children so far (None if the
        processes cannot be read)."""
        try:
            processes = [self.postmaster, *self.postmaster.children(recursive=True)]
        except psutil.Error:
            return None
        total = 0.0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    async def database(self, name: str) -> str:
        """A new, empty database; its DSN."""
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as admin:
            await admin.execute(f'CREATE DATABASE "{name}"')
        return make_conninfo(self.dsn, dbname=name)


@contextlib.asynccontextmanager
async def running_postgres(options: Options) -> AsyncIterator[Postgres]:
    """PostgreSQL alone, started by scripts/infra/engines.py in a temporary state dir with
    durable commits, and stopped (its data removed) afterwards."""
    async with running_engines(options, "postgres", NAME) as env:
        dsn = env["CHATPLANE_POSTGRES_DSN"]
        await make_durable(dsn)
        progress(options, f"{NAME}: PostgreSQL up with durable commits")
        yield Postgres(dsn, psutil.Process(int(env["CHATPLANE_POSTGRES_PID"])))


async def make_durable(dsn: str) -> None:
    """Turns fsync, full_page_writes and synchronous_commit back on (engines.py starts
    PostgreSQL without them, for tests), so commits cost what they cost in production."""
    superuser = make_conninfo(dsn, user="postgres")
    async with await psycopg.AsyncConnection.connect(superuser, autocommit=True) as admin:
        for setting in ("fsync", "full_page_writes", "synchronous_commit"):
            await admin.execute(f"ALTER SYSTEM SET {setting} = on")
        await admin.execute("SELECT pg_reload_conf()")
    await _wait_for_durability(dsn)


async def _wait_for_durability(dsn: str) -> None:
    """Until a new session sees fsync on (the reload reaches the backends asynchronously)."""
    deadline = time.monotonic() + 10
    while True:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
            cursor = await connection.execute(
                "SELECT current_setting('fsync'), current_setting('full_page_writes')"
            )
            if await cursor.fetchone() == ("on", "on"):
                return
        if time.monotonic() > deadline:
            raise RuntimeError("PostgreSQL did not turn fsync on")
        await asyncio.sleep(0.05)


async def _measure(
    postgres: Postgres, rows: int, work: Callable[[], Awaitable[None]]
) -> Measurement:
    server_before = postgres.cpu_seconds()
    client_before = time.process_time()
    started = time.perf_counter()
    await work()
    seconds = time.perf_counter() - started
    client = time.process_time() - client_before
    server_after = postgres.cpu_seconds()
    server = None if server_before is None or server_after is None else server_after - server_before
    return Measurement(rows, seconds, client, server)


async def _batched(postgres: Postgres, messages: Sequence[Message], writers: int) -> Measurement:
    dsn = await postgres.database(f"bench_copy_{writers}_{uuid.uuid4().hex[:8]}")
    stores = [await PostgresConversationStore.open(dsn, pool_max_size=2) for _ in range(writers)]
    # Each writer gets the messages of its own conversations, in log order (a partition).
    shares = [
        [m for m in messages if int(m.conversation_id[:8], 16) % writers == i]
        for i in range(writers)
    ]

    async def write(store: PostgresConversationStore, share: list[Message]) -> None:
        for start in range(0, len(share), BATCH):
            await store.write_messages(share[start : start + BATCH])

    async def work() -> None:
        await asyncio.gather(*(write(s, share) for s, share in zip(stores, shares, strict=True)))

    try:
        measured = await _measure(postgres, len(messages), work)
    finally:
        for store in stores:
            await store.close()
    await _check_stored(dsn, len(messages), counters=True)
    return measured


async def _one_per_row(postgres: Postgres, messages: Sequence[Message]) -> Measurement:
    """The baseline: one autocommit INSERT per message, issued here with psycopg (the store's
    schema, made by opening a store once, but none of its code)."""
    dsn = await postgres.database(f"bench_one_per_row_{uuid.uuid4().hex[:8]}")
    store = await PostgresConversationStore.open(dsn, pool_max_size=1)
    await store.close()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        firsts = {m.conversation_id: m for m in reversed(messages)}
        await connection.execute(
            "INSERT INTO conversations (conversation_id, tenant_id, user_id, title,"
            " create_time, update_time) SELECT id, tenant, user_id, '', now(), now()"
            " FROM unnest(%b::text[], %b::text[], %b::text[]) AS c (id, tenant, user_id)",
            (
                list(firsts),
                [m.owner.tenant_id for m in firsts.values()],
                [m.owner.user_id for m in firsts.values()],
            ),
        )
        now = datetime.now(UTC)

        async def work() -> None:
            for m in messages:
                await connection.execute(
                    "INSERT INTO messages (message_id, conversation_id, tenant_id, user_id,"
                    " role, text, status, model, create_time, reply_to_message_id,"
                    " finish_reason, input_tokens, output_tokens, client_message_id,"
                    " store_time) VALUES"
                    " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (message_id) DO NOTHING",
                    (
                        m.message_id,
                        m.conversation_id,
                        m.owner.tenant_id,
                        m.owner.user_id,
                        m.role.value,
                        m.text,
                        m.status.value,
                        m.model,
                        m.create_time,
                        m.reply_to_message_id,
                        m.finish_reason.value,
                        m.input_tokens,
                        m.output_tokens,
                        m.client_message_id,
                        now,
                    ),
                )

        measured = await _measure(postgres, len(messages), work)
    await _check_stored(dsn, len(messages), counters=False)
    return measured


async def _check_stored(dsn: str, expected: int, *, counters: bool) -> None:
    """The run stored every message exactly once (and counted it, for the batched paths)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
        cursor = await connection.execute(
            "SELECT (SELECT count(*) FROM messages),"
            " (SELECT coalesce(sum(message_count), 0) FROM conversations)"
        )
        row = await cursor.fetchone()
    assert row is not None
    stored, counted = row
    if stored != expected or (counters and counted != expected):
        raise RuntimeError(f"stored {stored} and counted {counted} of {expected} messages")


async def run(options: Options) -> list[Row]:
    """Runs the batched writes and the baseline one after another on one PostgreSQL, each into
    a database of its own, and returns the table's rows."""
    count = QUICK_MESSAGES if options.quick else MESSAGES
    messages = workload(count)
    progress(options, f"{NAME}: {count:,} messages, {sum(len(m.text) for m in messages):,} B")
    results: dict[str, Measurement] = {}
    async with running_postgres(options) as postgres:
        runs: list[tuple[str, Callable[[], Awaitable[Measurement]]]] = [
            (COPY, lambda: _batched(postgres, messages, 1)),
            (ONE_PER_ROW, lambda: _one_per_row(postgres, messages)),
            (COPY_TWO_WRITERS, lambda: _batched(postgres, messages, 2)),
        ]
        for label, measure in runs:
            results[label] = await measure()
            progress(
                options,
                f"{NAME}: {label}: {count / results[label].seconds:,.0f} rows/s",
            )
    return rows(results)


def rows(results: dict[str, Measurement]) -> list[Row]:
    """The report's rows from the measurements, by run."""
    baseline = results[ONE_PER_ROW].seconds
    batched = [COPY, COPY_TWO_WRITERS]
    return [
        Row(
            NAME,
            "throughput",
            "rows/s",
            {label: m.rows / m.seconds for label, m in results.items()},
            precision=0,
        ),
        Row(
            NAME,
            "wall time per row",
            "us",
            {label: m.per_row_us(m.seconds) for label, m in results.items()},
            Target(1e6 / TARGET_ROWS_PER_SECOND, column=COPY),
            precision=1,
        ),
        Row(
            NAME,
            "speed-up over one INSERT per row",
            "x",
            {label: baseline / results[label].seconds for label in batched},
            precision=1,
        ),
        Row(
            NAME,
            "cost relative to one INSERT per row",
            "%",
            {label: results[label].seconds / baseline * 100 for label in batched},
            Target(100 / TARGET_SPEEDUP, column=COPY),
            precision=1,
        ),
        Row(
            NAME,
            "client CPU per row",
            "us",
            {label: m.per_row_us(m.client_cpu_seconds) for label, m in results.items()},
            precision=1,
        ),
        Row(
            NAME,
            "PostgreSQL CPU per row",
            "us",
            {label: m.per_row_us(m.server_cpu_seconds) for label, m in results.items()},
            precision=1,
        ),
        Row(
            NAME,
            "elapsed",
            "s",
            {label: m.seconds for label, m in results.items()},
            precision=1,
        ),
    ]

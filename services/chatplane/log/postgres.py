"""The embedded profile's message log: tables in PostgreSQL, shared by every process on one DSN.

It keeps the Kafka-shaped contract of chatplane.log.base with one partition (0) per topic.
An append is one statement (so one transaction) that reserves its offsets by updating the
topic's row in ``message_log.topics``: the row lock it takes is held until commit, so appends
to one topic commit in offset order and a reader never sees offset N+1 while N is still
uncommitted (a sequence would hand out offsets in one order and commit them in another, and a
consumer that moved past the gap would skip N forever). The same statement NOTIFYs the
topic's name on one channel; PostgreSQL delivers it at commit, and waiting consumers wake on
it instead of polling the tables, with a read every ``wake_interval`` seconds as a fallback.
Group commits live in ``message_log.group_offsets``. The log creates its schema on first use,
idempotently, so producers and consumers can start in any order.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Sequence
from typing import Any, Final

import psycopg
from psycopg_pool import AsyncConnectionPool

from chatplane.common.errors import Unavailable
from chatplane.log.base import (
    ConsumedRecord,
    Headers,
    LogRecord,
    MessageLog,
    MessageLogConsumer,
    MessageLogProducer,
)

PARTITION: Final = 0
"""The only partition of every topic: offsets are assigned under one row lock per topic."""

SCHEMA: Final = "message_log"
"""The PostgreSQL schema holding the log's tables, apart from the system of record's."""

NOTIFY_CHANNEL: Final = "chatplane_message_log"
"""The channel every append notifies, with the topic's name as payload."""

PRODUCER_APPLICATION: Final = "chatplane-log-producer"
CONSUMER_APPLICATION: Final = "chatplane-log-consumer"
"""The application_name of the log's connections, as operators see them in pg_stat_activity."""

# The first half of the two-int4 advisory lock key that serialises creating the schema; the
# store's lock classes are 0x43500001.. (persistence/store/postgres.py).
_LOCK_CLASS_LOG_SCHEMA: Final = 0x43500010

_SCHEMA_STATEMENTS: Final = (
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    # Offsets come from this counter rather than max(log_offset), so that they are never
    # reused once records are erased; its row is also the lock that orders appends.
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.topics (
        topic text COLLATE "C" PRIMARY KEY,
        next_offset bigint NOT NULL
    )""",
    # EXTERNAL: values are sealed (encrypted), so trying to compress them is wasted work.
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.records (
        topic text COLLATE "C" NOT NULL,
        log_offset bigint NOT NULL,
        key bytea NOT NULL,
        value bytea STORAGE EXTERNAL NOT NULL,
        headers bytea NOT NULL,
        timestamp_ms bigint NOT NULL,
        PRIMARY KEY (topic, log_offset)
    )""",
    # Erasure and retention delete a conversation's records by key (record_erasure.py).
    f"CREATE INDEX IF NOT EXISTS records_by_key ON {SCHEMA}.records (key)",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.group_offsets (
        group_id text COLLATE "C" NOT NULL,
        topic text COLLATE "C" NOT NULL,
        partition integer NOT NULL,
        next_offset bigint NOT NULL,
        PRIMARY KEY (group_id, topic, partition)
    )""",
)

# One statement, hence one transaction, per append. Topics are reserved in name order so that
# two multi-topic appends cannot deadlock on each other's topic rows.
_APPEND: Final = f"""
WITH batch AS (
    SELECT b.topic, b.key, b.value, b.headers, b.position
    FROM unnest(%(topics)s::text[], %(keys)s::bytea[], %(values)s::bytea[], %(headers)s::bytea[])
        WITH ORDINALITY AS b(topic, key, value, headers, position)
),
counts AS (
    SELECT topic COLLATE "C" AS topic, count(*) AS n FROM batch GROUP BY 1
),
reserved AS (
    INSERT INTO {SCHEMA}.topics AS t (topic, next_offset)
    SELECT topic, n FROM counts ORDER BY topic
    ON CONFLICT (topic) DO UPDATE SET next_offset = t.next_offset + excluded.next_offset
    RETURNING t.topic, t.next_offset
),
stored AS (
    INSERT INTO {SCHEMA}.records (topic, log_offset, key, value, headers, timestamp_ms)
    SELECT b.topic,
           r.next_offset - c.n - 1
               + row_number() OVER (PARTITION BY b.topic ORDER BY b.position),
           b.key, b.value, b.headers, %(timestamp_ms)s
    FROM batch AS b
    JOIN reserved AS r ON r.topic = b.topic
    JOIN counts AS c ON c.topic = b.topic
)
SELECT pg_notify('{NOTIFY_CHANNEL}', topic) FROM counts
"""

# Up to `wanted` records past each topic's position, topics in the order given (the consumer
# rotates it so that a busy topic cannot starve the others).
_READ: Final = f"""
SELECT r.topic, r.log_offset, r.key, r.value, r.headers, r.timestamp_ms
FROM unnest(%(topics)s::text[], %(positions)s::bigint[]) WITH ORDINALITY AS p(topic, at, turn)
CROSS JOIN LATERAL (
    SELECT topic, log_offset, key, value, headers, timestamp_ms FROM {SCHEMA}.records
    WHERE topic = p.topic COLLATE "C" AND log_offset >= p.at
    ORDER BY log_offset LIMIT %(wanted)s
) AS r
ORDER BY p.turn, r.log_offset
LIMIT %(wanted)s
"""

_COMMITTED: Final = f"""
SELECT topic, next_offset FROM {SCHEMA}.group_offsets
WHERE group_id = %s AND partition = {PARTITION} AND topic = ANY(%s::text[])
"""

_ENDS: Final = f"SELECT topic, next_offset FROM {SCHEMA}.topics WHERE topic = ANY(%s::text[])"

_STORE_COMMIT: Final = f"""
INSERT INTO {SCHEMA}.group_offsets (group_id, topic, partition, next_offset)
SELECT %s, topic, partition, next_offset
FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS c(topic, partition, next_offset)
ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = excluded.next_offset
"""

_LAG: Final = f"""
SELECT coalesce(sum(t.next_offset - coalesce(g.next_offset, 0)), 0)
FROM {SCHEMA}.topics AS t
LEFT JOIN {SCHEMA}.group_offsets AS g
    ON g.group_id = %s AND g.topic = t.topic AND g.partition = {PARTITION}
WHERE t.topic = ANY(%s::text[])
"""

_LENGTH: Final = struct.Struct(">I")

_Connection = psycopg.AsyncConnection[tuple[Any, ...]]

# Connection refused or lost, server shutting down, pool exhausted, deadlock, statement
# cancelled, disk full; and a primary turned standby: all worth a retry later.
_UNAVAILABLE_ERRORS: Final = (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction)


class PostgresMessageLog(MessageLog):
    """The log in the PostgreSQL database at `dsn` (schema created on first use).

    `wake_interval` bounds how long a waiting consumer relies on notifications alone before
    it reads the tables anyway; `pool_size` is the most connections one producer opens
    (concurrent appends each need one); `connect_timeout` bounds connecting.
    """

    def __init__(
        self,
        dsn: str,
        *,
        wake_interval: float = 1.0,
        pool_size: int = 4,
        connect_timeout: float = 10.0,
    ) -> None:
        if not dsn.strip():
            raise ValueError("the message log needs a PostgreSQL DSN")
        if wake_interval <= 0 or connect_timeout <= 0 or pool_size < 1:
            raise ValueError("wake_interval, connect_timeout and pool_size must be positive")
        self._dsn = dsn
        self._wake_interval = wake_interval
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout

    @property
    def dsn(self) -> str:
        """The database's connection string."""
        return self._dsn

    def producer(self) -> MessageLogProducer:
        return _PostgresProducer(self._dsn, self._pool_size, self._connect_timeout)

    def consumer(self, group: str, topics: Sequence[str]) -> MessageLogConsumer:
        if not group or not topics:
            raise ValueError("a consumer needs a group and at least one topic")
        return _PostgresConsumer(
            self._dsn, self._connect_timeout, group, topics, self._wake_interval
        )

    def tail(self, topics: Sequence[str]) -> MessageLogConsumer:
        if not topics:
            raise ValueError("a tail needs at least one topic")
        return _PostgresTail(self._dsn, self._connect_timeout, "", topics, self._wake_interval)


async def ensure_schema(connection: _Connection) -> None:
    """Create the log's schema and tables unless they exist (any number of processes may try
    at once: an advisory lock serialises them). `connection` is in autocommit mode."""
    cursor = await connection.execute(f"SELECT to_regclass('{SCHEMA}.group_offsets')")
    row = await cursor.fetchone()
    if row is not None and row[0] is not None:
        return
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_LOCK_CLASS_LOG_SCHEMA,))
        for statement in _SCHEMA_STATEMENTS:
            await connection.execute(statement)


def encode_headers(headers: Headers) -> bytes:
    """Headers as one bytea: per header, its name and value, each prefixed by its length."""
    parts: list[bytes] = []
    for name, value in headers:
        encoded_name = name.encode()
        parts += (_LENGTH.pack(len(encoded_name)), encoded_name, _LENGTH.pack(len(value)), value)
    return b"".join(parts)


def decode_headers(blob: bytes) -> Headers:
    """The inverse of encode_headers."""
    headers: list[tuple[str, bytes]] = []
    position = 0
    while position < len(blob):
        (length,) = _LENGTH.unpack_from(blob, position)
        position += _LENGTH.size
        name = blob[position : position + length].decode()
        position += length
        (length,) = _LENGTH.unpack_from(blob, position)
        position += _LENGTH.size
        headers.append((name, blob[position : position + length]))
        position += length
    return tuple(headers)


class _PostgresProducer(MessageLogProducer):
    """Appends through a small pool of autocommit connections, opened at the first append."""

    def __init__(self, dsn: str, pool_size: int, connect_timeout: float) -> None:
        self._pool: AsyncConnectionPool[_Connection] = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, round(connect_timeout)),
                "application_name": PRODUCER_APPLICATION,
            },
            configure=ensure_schema,
            open=False,
            name="chatplane-log-producer",
        )
        self._opened = False
        self._opening = asyncio.Lock()
        self._closed = False

    async def append(self, records: Sequence[LogRecord], timeout: float) -> None:
        if self._closed:
            raise Unavailable("the message log producer is closed")
        if not records:
            return
        parameters = {
            "topics": [record.topic for record in records],
            "keys": [record.key for record in records],
            "values": [record.value for record in records],
            "headers": [encode_headers(record.headers) for record in records],
            "timestamp_ms": time.time_ns() // 1_000_000,
        }
        try:
            # On timeout the statement is cancelled in the server (psycopg sends a cancel
            # request), so the append is then either wholly stored or not at all.
            async with asyncio.timeout(timeout):
                await self._open()
                async with self._pool.connection() as connection:
                    await connection.execute(_APPEND, parameters, binary=True)
        except TimeoutError as error:
            raise Unavailable(f"the message log did not acknowledge within {timeout:g}s") from error
        except _UNAVAILABLE_ERRORS as error:
            raise Unavailable(f"the message log cannot append: {error}") from error

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            async with self._opening:
                if self._opened:
                    await self._pool.close()

    async def _open(self) -> None:
        if self._opened:
            return
        async with self._opening:
            if self._closed:
                raise Unavailable("the message log producer is closed")
            if not self._opened:
                # wait=False: the first append waits for a connection like any other, within
                # its own timeout, rather than for the whole pool's minimum.
                await self._pool.open(wait=False)
                self._opened = True


class _PostgresConsumer(MessageLogConsumer):
    """One autocommit connection that LISTENs on the log's channel, reads from in-session
    positions and stores the group's commits."""

    def __init__(
        self,
        dsn: str,
        connect_timeout: float,
        group: str,
        topics: Sequence[str],
        wake_interval: float,
    ) -> None:
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._group = group
        self._topics = tuple(dict.fromkeys(topics))
        self._topic_set = frozenset(self._topics)
        self._wake_interval = wake_interval
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()
        # Next offset to return per topic; None until loaded from the group's commits.
        self._positions: dict[str, int] | None = None
        self._first_topic = 0
        # True while the last read may have left records behind (it filled its batch, or no
        # read happened since connecting); False once a read came back short, after which
        # only a notification or the wake interval makes the consumer read again.
        self._behind = True
        self._last_read = 0.0
        self._waiter: asyncio.Task[bool] | None = None
        self._polling = False
        self._poll_ended = asyncio.Event()
        self._closed = False

    async def poll_batch(self, max_records: int, max_wait: float) -> list[ConsumedRecord]:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        if self._polling:
            raise RuntimeError("poll_batch is already running on this consumer")
        self._check_open()
        deadline = time.monotonic() + max(0.0, max_wait)
        self._polling = True
        self._poll_ended.clear()
        try:
            return await self._poll(max_records, max_wait <= 0, deadline)
        except _UNAVAILABLE_ERRORS as error:
            await self._disconnect()
            raise Unavailable(f"the message log cannot be read: {error}") from error
        finally:
            self._polling = False
            self._poll_ended.set()

    async def commit(self, records: Sequence[ConsumedRecord]) -> None:
        self._check_open()
        highest: dict[tuple[str, int], int] = {}
        for record in records:
            place = (record.topic, record.partition)
            highest[place] = max(record.offset, highest.get(place, -1))
        if not highest:
            return
        places = sorted(highest)
        parameters = (
            self._group,
            [topic for topic, _ in places],
            [partition for _, partition in places],
            [highest[place] + 1 for place in places],
        )
        await self._query(_STORE_COMMIT, parameters)

    async def lag(self) -> int:
        self._check_open()
        rows = await self._query(_LAG, (self._group, list(self._topics)))
        return int(rows[0][0])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._waiter is not None:
            self._waiter.cancel()
        if self._polling:
            await self._poll_ended.wait()
        await self._disconnect()

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the message log consumer is closed")

    async def _poll(
        self, max_records: int, now_only: bool, deadline: float
    ) -> list[ConsumedRecord]:
        connection = await self._connected()
        if self._positions is None:
            self._positions = await self._start_positions(connection)
        # Start each poll at the next topic so that a busy topic cannot starve the others.
        start = self._first_topic
        self._first_topic = (start + 1) % len(self._topics)
        topics = self._topics[start:] + self._topics[:start]
        positions = dict(self._positions)
        records: list[ConsumedRecord] = []
        woken = False
        while not self._closed:
            since_read = time.monotonic() - self._last_read
            if self._behind or woken or now_only or since_read >= self._wake_interval:
                await self._read(connection, topics, positions, max_records, records)
                if len(records) >= max_records:
                    break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            wait = min(remaining, self._last_read + self._wake_interval - time.monotonic())
            woken = await self._wait_for_notification(connection, max(0.0, wait))
        # Positions advance only here: a cancelled or failed poll returns nothing, and its
        # records are read again by the next poll.
        self._positions = positions
        return records

    async def _read(
        self,
        connection: _Connection,
        topics: tuple[str, ...],
        positions: dict[str, int],
        max_records: int,
        records: list[ConsumedRecord],
    ) -> None:
        wanted = max_records - len(records)
        parameters = {
            "topics": list(topics),
            "positions": [positions[topic] for topic in topics],
            "wanted": wanted,
        }
        cursor = await connection.execute(_READ, parameters, binary=True)
        rows = await cursor.fetchall()
        self._last_read = time.monotonic()
        self._behind = len(rows) >= wanted
        for topic, offset, key, value, headers, timestamp_ms in rows:
            records.append(
                ConsumedRecord(
                    topic, PARTITION, offset, key, value, decode_headers(headers), timestamp_ms
                )
            )
            positions[topic] = offset + 1

    async def _wait_for_notification(self, connection: _Connection, timeout: float) -> bool:
        """Whether an append to one of the topics was notified within `timeout` seconds.

        The wait runs as its own task so that commit, lag and close can interrupt it: while
        it runs it holds the connection."""
        self._waiter = asyncio.ensure_future(self._next_notification(connection, timeout))
        try:
            await asyncio.wait((self._waiter,))
        finally:
            waiter, self._waiter = self._waiter, None
            if not waiter.done():  # this poll itself was cancelled
                waiter.cancel()
                await asyncio.gather(waiter, return_exceptions=True)
        # Interrupted: read as if woken, so that nothing notified meanwhile waits for the
        # wake interval.
        return waiter.cancelled() or waiter.result()

    async def _next_notification(self, connection: _Connection, timeout: float) -> bool:
        # psycopg keeps the notifications that arrive while no notifies() runs and yields them
        # first, so none is lost between a read and this wait. aclosing: leaving the loop
        # early must end the generator at once, releasing the connection's lock.
        async with contextlib.aclosing(connection.notifies(timeout=timeout)) as notifications:
            async for notification in notifications:
                if notification.payload in self._topic_set:
                    return True
        return False

    async def _query(self, query: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            connection = await self._connected()
            if self._waiter is not None:
                self._waiter.cancel()  # it holds the connection; the poll waits again after
            cursor = await connection.execute(query, parameters)
            return await cursor.fetchall() if cursor.description is not None else []
        except _UNAVAILABLE_ERRORS as error:
            if not self._polling:
                await self._disconnect()
            raise Unavailable(f"the message log cannot be reached: {error}") from error

    async def _connected(self) -> _Connection:
        # One connection even when a poll and a commit or lag() are the first to need it.
        async with self._connecting:
            if self._connection is None or self._connection.closed:
                self._connection = await self._connect()
                self._behind = True
            return self._connection

    async def _connect(self) -> _Connection:
        connection = await psycopg.AsyncConnection.connect(
            self._dsn,
            autocommit=True,
            connect_timeout=max(1, round(self._connect_timeout)),
            application_name=CONSUMER_APPLICATION,
        )
        try:
            await ensure_schema(connection)
            # LISTEN before the first read: an append committed after that read is then
            # always notified.
            await connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except BaseException:
            await connection.close()
            raise
        return connection

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    async def _start_positions(self, connection: _Connection) -> dict[str, int]:
        cursor = await connection.execute(_COMMITTED, (self._group, list(self._topics)))
        committed = {str(topic): int(offset) for topic, offset in await cursor.fetchall()}
        # A group that never committed starts at the earliest record (Kafka's "earliest" reset).
        return {topic: committed.get(topic, 0) for topic in self._topics}


class _PostgresTail(_PostgresConsumer):
    """A consumer in no group: starts at each topic's end at its first poll, commits nothing."""

    async def commit(self, records: Sequence[ConsumedRecord]) -> None:
        self._check_open()

    async def lag(self) -> int:
        self._check_open()
        return 0

    async def _start_positions(self, connection: _Connection) -> dict[str, int]:
        cursor = await connection.execute(_ENDS, (list(self._topics),))
        ends = {str(topic): int(offset) for topic, offset in await cursor.fetchall()}
        return {topic: ends.get(topic, 0) for topic in self._topics}

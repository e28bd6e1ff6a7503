"""The embedded message log: a durable log in one SQLite file, shared by the processes using it.

It keeps the Kafka-shaped contract of chatplane.log.base with one partition (0) per topic:
every append takes SQLite's single write lock, so offsets are assigned and become visible
strictly in order, and a consumer can track its position as one "next offset" per topic.
Group commits live in the same file. One consumer per group at a time: with one partition
there is nothing to split, as in Kafka where extra members of a group sit idle.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from chatplane.common.errors import Unavailable
from chatplane.log.base import (
    ConsumedRecord,
    Headers,
    LogRecord,
    MessageLog,
    MessageLogConsumer,
    MessageLogProducer,
)

PARTITION = 0
"""The only partition of every topic: one SQLite file is totally ordered already."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS log_topics (
        topic TEXT PRIMARY KEY,
        next_offset INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS log_records (
        topic TEXT NOT NULL,
        log_offset INTEGER NOT NULL,
        key BLOB NOT NULL,
        value BLOB NOT NULL,
        headers BLOB NOT NULL,
        timestamp_ms INTEGER NOT NULL,
        PRIMARY KEY (topic, log_offset)
    )""",
    """CREATE TABLE IF NOT EXISTS log_group_offsets (
        group_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        partition INTEGER NOT NULL,
        next_offset INTEGER NOT NULL,
        PRIMARY KEY (group_id, topic, partition)
    ) WITHOUT ROWID""",
)

_LENGTH = struct.Struct(">I")

_T = TypeVar("_T")


class EmbeddedMessageLog(MessageLog):
    """The log in the SQLite file at `path` (created on first use), for any number of processes.

    `poll_interval` is how often a waiting consumer checks the file for other processes'
    appends; `busy_timeout` bounds how long opening, committing and reading wait for a lock.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        poll_interval: float = 0.005,
        busy_timeout: float = 10.0,
    ) -> None:
        if poll_interval <= 0 or busy_timeout <= 0:
            raise ValueError("poll_interval and busy_timeout must be positive")
        self._path = Path(path)
        self._poll_interval = poll_interval
        self._busy_timeout = busy_timeout

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self._path

    def producer(self) -> MessageLogProducer:
        return _EmbeddedProducer(
            _Database(self._path, self._busy_timeout, "chatplane-log-producer")
        )

    def consumer(self, group: str, topics: Sequence[str]) -> MessageLogConsumer:
        if not group or not topics:
            raise ValueError("a consumer needs a group and at least one topic")
        database = _Database(self._path, self._busy_timeout, f"chatplane-log-consumer-{group}")
        return _EmbeddedConsumer(database, group, topics, self._poll_interval)

    def tail(self, topics: Sequence[str]) -> MessageLogConsumer:
        if not topics:
            raise ValueError("a tail needs at least one topic")
        database = _Database(self._path, self._busy_timeout, "chatplane-log-tail")
        return _EmbeddedTail(database, "", topics, self._poll_interval)


class _Database:
    """One SQLite connection, opened lazily, used only from its own thread as sqlite3 requires."""

    def __init__(self, path: Path, busy_timeout: float, thread_name: str) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=thread_name)
        self._connection: sqlite3.Connection | None = None

    def submit(self, work: Callable[[], _T]) -> concurrent.futures.Future[_T]:
        return self._executor.submit(work)

    def connection(self) -> sqlite3.Connection:
        """The connection; call only from work running on this object's thread."""
        if self._connection is None:
            self._connection = _open(self._path, self._busy_timeout)
        return self._connection

    async def close(self) -> None:
        try:
            # Queued after any work already submitted, so that work finishes first.
            await asyncio.wrap_future(self._executor.submit(self._close_connection))
        finally:
            self._executor.shutdown(wait=False)

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _open(path: Path, busy_timeout: float) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: transactions are explicit, so one append is exactly one transaction.
    connection = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        # WAL lets consumers read while a producer writes; FULL fsyncs the WAL on every
        # commit, so an acknowledged append survives a power cut, not just a process crash.
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise sqlite3.OperationalError(f"{path}: journal_mode is {mode}, WAL is required")
        connection.execute("PRAGMA synchronous = FULL")
        with _transaction(connection):
            for statement in _SCHEMA:
                connection.execute(statement)
    except BaseException:
        connection.close()
        raise
    return connection


@contextlib.contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front: waiting for it honours busy_timeout, whereas a
    # deferred transaction upgrading from read to write can fail at once with SQLITE_BUSY.
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _encode_headers(headers: Headers) -> bytes:
    parts: list[bytes] = []
    for name, value in headers:
        encoded_name = name.encode()
        parts += (_LENGTH.pack(len(encoded_name)), encoded_name, _LENGTH.pack(len(value)), value)
    return b"".join(parts)


def _decode_headers(blob: bytes) -> Headers:
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


@dataclass(slots=True)
class _PendingAppend:
    records: Sequence[LogRecord]
    deadline: float
    acknowledged: concurrent.futures.Future[None]


class _EmbeddedProducer(MessageLogProducer):
    """Appends with group commit: appends that arrive while a transaction is being written
    share the next one, so concurrent turns share one fsync instead of queueing for one each."""

    def __init__(self, database: _Database) -> None:
        self._database = database
        self._pending: list[_PendingAppend] = []
        self._pending_lock = threading.Lock()
        self._closed = False

    async def append(self, records: Sequence[LogRecord], timeout: float) -> None:
        if self._closed:
            raise Unavailable("the message log producer is closed")
        if not records:
            return
        pending = _PendingAppend(
            tuple(records), time.monotonic() + timeout, concurrent.futures.Future()
        )
        with self._pending_lock:
            self._pending.append(pending)
        self._database.submit(self._write_pending)
        try:
            # On timeout wait_for cancels `acknowledged`; if its transaction has not started
            # yet, the records are then never written.
            await asyncio.wait_for(asyncio.wrap_future(pending.acknowledged), timeout)
        except TimeoutError as error:
            raise Unavailable(f"the message log did not acknowledge within {timeout:g}s") from error

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._database.close()

    def _write_pending(self) -> None:
        with self._pending_lock:
            taken, self._pending = self._pending, []
        # Callers that gave up before their transaction started are left out (never stored).
        batch = [p for p in taken if p.acknowledged.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            connection = self._database.connection()
            # Wait for other processes' write lock no longer than the most patient caller.
            wait_ms = max(1, int((max(p.deadline for p in batch) - time.monotonic()) * 1000))
            connection.execute(f"PRAGMA busy_timeout = {wait_ms}")
            _insert(connection, [record for p in batch for record in p.records])
        except Exception as error:
            for p in batch:
                if isinstance(error, sqlite3.Error):
                    unavailable = Unavailable(f"the message log cannot append: {error}")
                    unavailable.__cause__ = error
                    p.acknowledged.set_exception(unavailable)
                else:
                    p.acknowledged.set_exception(error)
        else:
            for p in batch:
                p.acknowledged.set_result(None)


def _insert(connection: sqlite3.Connection, records: Sequence[LogRecord]) -> None:
    timestamp_ms = time.time_ns() // 1_000_000
    with _transaction(connection):
        next_offsets: dict[str, int] = {}
        rows: list[tuple[str, int, bytes, bytes, bytes, int]] = []
        for record in records:
            if record.topic not in next_offsets:
                row = connection.execute(
                    "SELECT next_offset FROM log_topics WHERE topic = ?", (record.topic,)
                ).fetchone()
                next_offsets[record.topic] = 0 if row is None else int(row[0])
            offset = next_offsets[record.topic]
            next_offsets[record.topic] = offset + 1
            headers = _encode_headers(record.headers)
            rows.append((record.topic, offset, record.key, record.value, headers, timestamp_ms))
        connection.executemany(
            "INSERT INTO log_records (topic, log_offset, key, value, headers, timestamp_ms)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        # Offsets come from this counter rather than max(log_offset) so that they are never
        # reused, even once old records are deleted by a future retention job.
        connection.executemany(
            "INSERT INTO log_topics (topic, next_offset) VALUES (?, ?)"
            " ON CONFLICT (topic) DO UPDATE SET next_offset = excluded.next_offset",
            next_offsets.items(),
        )


class _EmbeddedConsumer(MessageLogConsumer):
    """Reads from its in-session positions; commits go to log_group_offsets in the same file."""

    def __init__(
        self, database: _Database, group: str, topics: Sequence[str], poll_interval: float
    ) -> None:
        self._database = database
        self._group = group
        self._topics = tuple(dict.fromkeys(topics))
        self._poll_interval = poll_interval
        # Next offset to return per topic; None until loaded from the group's commits.
        self._positions: dict[str, int] | None = None
        self._first_topic = 0
        self._polling: threading.Event | None = None
        self._closed = False

    async def poll_batch(self, max_records: int, max_wait: float) -> list[ConsumedRecord]:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        if self._polling is not None:
            raise RuntimeError("poll_batch is already running on this consumer")
        self._check_open()
        deadline = time.monotonic() + max(0.0, max_wait)
        # Start each poll at the next topic so that a busy topic cannot starve the others.
        start = self._first_topic
        self._first_topic = (start + 1) % len(self._topics)
        topics = self._topics[start:] + self._topics[:start]
        positions = None if self._positions is None else dict(self._positions)
        stop = self._polling = threading.Event()
        work = functools.partial(self._fetch, positions, topics, max_records, deadline, stop)
        try:
            # Positions advance only when the result arrives here: a cancelled poll returns
            # nothing, and its records are read again by the next poll.
            self._positions, records = await self._run(work)
        except asyncio.CancelledError:
            stop.set()
            raise
        finally:
            self._polling = None
        return records

    async def commit(self, records: Sequence[ConsumedRecord]) -> None:
        self._check_open()
        highest: dict[tuple[str, int], int] = {}
        for record in records:
            place = (record.topic, record.partition)
            highest[place] = max(record.offset, highest.get(place, -1))
        if highest:
            rows = [(self._group, t, p, offset + 1) for (t, p), offset in highest.items()]
            await self._run(functools.partial(self._store_commit, rows))

    async def lag(self) -> int:
        self._check_open()
        return await self._run(self._lag)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._polling is not None:
                self._polling.set()
            await self._database.close()

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the message log consumer is closed")

    async def _run(self, work: Callable[[], _T]) -> _T:
        try:
            return await asyncio.wrap_future(self._database.submit(work))
        except sqlite3.Error as error:
            raise Unavailable(f"the message log cannot be read: {error}") from error

    def _fetch(
        self,
        positions: dict[str, int] | None,
        topics: tuple[str, ...],
        max_records: int,
        deadline: float,
        stop: threading.Event,
    ) -> tuple[dict[str, int], list[ConsumedRecord]]:
        connection = self._database.connection()
        if positions is None:
            positions = self._committed(connection)
        records: list[ConsumedRecord] = []
        seen_version: int | None = None
        while True:
            # data_version changes when another connection (any process) has committed, and
            # costs microseconds to read, so a waiting consumer reads records only then.
            version = int(connection.execute("PRAGMA data_version").fetchone()[0])
            if version != seen_version:
                seen_version = version
                self._read(connection, positions, topics, max_records, records)
                if len(records) >= max_records:
                    return positions, records
            remaining = deadline - time.monotonic()
            if remaining <= 0 or stop.wait(min(self._poll_interval, remaining)):
                return positions, records

    def _read(
        self,
        connection: sqlite3.Connection,
        positions: dict[str, int],
        topics: tuple[str, ...],
        max_records: int,
        records: list[ConsumedRecord],
    ) -> None:
        for topic in topics:
            wanted = max_records - len(records)
            if wanted == 0:
                return
            rows = connection.execute(
                "SELECT log_offset, key, value, headers, timestamp_ms FROM log_records"
                " WHERE topic = ? AND log_offset >= ? ORDER BY log_offset LIMIT ?",
                (topic, positions[topic], wanted),
            ).fetchall()
            for offset, key, value, headers, timestamp_ms in rows:
                records.append(
                    ConsumedRecord(
                        topic, PARTITION, offset, key, value, _decode_headers(headers), timestamp_ms
                    )
                )
            if rows:
                positions[topic] = int(rows[-1][0]) + 1

    def _committed(self, connection: sqlite3.Connection) -> dict[str, int]:
        rows = connection.execute(
            "SELECT topic, next_offset FROM log_group_offsets WHERE group_id = ? AND partition = ?",
            (self._group, PARTITION),
        ).fetchall()
        committed = {str(topic): int(offset) for topic, offset in rows}
        # A group that never committed starts at the earliest record (Kafka's "earliest" reset).
        return {topic: committed.get(topic, 0) for topic in self._topics}

    def _store_commit(self, rows: list[tuple[str, str, int, int]]) -> None:
        connection = self._database.connection()
        with _transaction(connection):
            connection.executemany(
                "INSERT INTO log_group_offsets (group_id, topic, partition, next_offset)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (group_id, topic, partition)"
                " DO UPDATE SET next_offset = excluded.next_offset",
                rows,
            )

    def _lag(self) -> int:
        connection = self._database.connection()
        total = 0
        for topic in self._topics:
            row = connection.execute(
                "SELECT t.next_offset - coalesce(("
                "  SELECT g.next_offset FROM log_group_offsets AS g"
                "  WHERE g.group_id = ? AND g.topic = t.topic AND g.partition = ?), 0)"
                " FROM log_topics AS t WHERE t.topic = ?",
                (self._group, PARTITION, topic),
            ).fetchone()
            total += 0 if row is None else int(row[0])
        return total


class _EmbeddedTail(_EmbeddedConsumer):
    """A consumer in no group: starts at each topic's next offset, commits nothing."""

    async def commit(self, records: Sequence[ConsumedRecord]) -> None:
        self._check_open()

    async def lag(self) -> int:
        self._check_open()
        return 0

    def _committed(self, connection: sqlite3.Connection) -> dict[str, int]:
        placeholders = ", ".join("?" * len(self._topics))
        rows = connection.execute(
            f"SELECT topic, next_offset FROM log_topics WHERE topic IN ({placeholders})",
            self._topics,
        ).fetchall()
        ends = {str(topic): int(offset) for topic, offset in rows}
        return {topic: ends.get(topic, 0) for topic in self._topics}

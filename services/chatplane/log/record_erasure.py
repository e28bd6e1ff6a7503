"""Removing a user's records from the message log (erasure and retention, docs/privacy.md).

Every chatplane topic is keyed by conversation id, so a user's records are the records of
their conversations. The embedded log deletes them from its PostgreSQL table. Kafka cannot delete
single records: on a compacted topic a tombstone (the key with a null value) makes the broker
drop the key's earlier records at the next compaction; on the other topics (every chatplane
topic by default, `cleanup.policy=delete`) the records stay until the topic's retention
deletes their segment, and crypto-shredding (the user's destroyed data key) makes them
unreadable until then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Any, Final, Protocol

import psycopg
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from chatplane.common.errors import Unavailable
from chatplane.log.postgres import SCHEMA

_IN_CHUNK: Final = 500


class LogRecordEraser(Protocol):
    """Removes the records of some conversations from every topic of the log."""

    async def erase_conversations(self, conversation_ids: Collection[str]) -> dict[str, int]:
        """Removes (or tombstones) the records keyed by these conversation ids; counts per
        kind of removal. Idempotent."""
        ...


class PostgresLogEraser:
    """Deletes records from the embedded log's tables in the PostgreSQL database at `dsn`."""

    def __init__(self, dsn: str, *, timeout: float = 60.0) -> None:
        self._dsn = dsn
        self._timeout = timeout

    async def erase_conversations(self, conversation_ids: Collection[str]) -> dict[str, int]:
        keys = sorted(
            {conversation_id.encode() for conversation_id in conversation_ids if conversation_id}
        )
        if not keys:
            return {"log_records": 0}
        try:
            async with asyncio.timeout(self._timeout):
                return {"log_records": await self._delete(keys)}
        except (TimeoutError, psycopg.OperationalError) as error:
            raise Unavailable("the message log is unavailable") from error

    async def _delete(self, keys: Sequence[bytes]) -> int:
        connection = await psycopg.AsyncConnection.connect(
            self._dsn, autocommit=True, connect_timeout=max(1, round(self._timeout))
        )
        async with connection:
            # The log creates its tables on first use; none yet means nothing was ever logged.
            cursor = await connection.execute(f"SELECT to_regclass('{SCHEMA}.records')")
            row = await cursor.fetchone()
            if row is None or row[0] is None:
                return 0
            deleted = 0
            for start in range(0, len(keys), _IN_CHUNK):
                cursor = await connection.execute(
                    f"DELETE FROM {SCHEMA}.records WHERE key = ANY(%s::bytea[])",
                    (list(keys[start : start + _IN_CHUNK]),),
                )
                deleted += cursor.rowcount
            if deleted:
                # Prunes the deleted rows now rather than whenever autovacuum comes by; what
                # stays on disk until overwritten (free space in pages, old WAL) is sealed
                # with the user's destroyed data key.
                await connection.execute(f"VACUUM {SCHEMA}.records")
            return deleted


class KafkaLogEraser:
    """Writes tombstones for the conversations on those of `topics` that are compacted."""

    def __init__(self, bootstrap: str, topics: Sequence[str], *, timeout: float = 10.0) -> None:
        self._config: dict[str, Any] = {"bootstrap.servers": bootstrap}
        self._topics = tuple(topics)
        self._timeout = timeout

    async def erase_conversations(self, conversation_ids: Collection[str]) -> dict[str, int]:
        return await asyncio.to_thread(self._erase, sorted(set(conversation_ids)))

    def compacted_topics(self) -> list[str]:
        """Those of the topics whose cleanup.policy includes `compact` (topics that do not
        exist are skipped)."""
        admin = AdminClient(self._config)
        resources = [ConfigResource("topic", topic) for topic in self._topics]
        compacted: list[str] = []
        for resource, future in admin.describe_configs(resources).items():
            try:
                entries = future.result(timeout=self._timeout)
            except KafkaException as error:
                if "UNKNOWN_TOPIC" in str(error):
                    continue
                raise Unavailable("Kafka could not describe the log's topics") from error
            policy = entries.get("cleanup.policy")
            if policy is not None and "compact" in str(policy.value):
                compacted.append(str(resource.name))
        return sorted(compacted)

    def _erase(self, conversation_ids: Sequence[str]) -> dict[str, int]:
        compacted = self.compacted_topics()
        if not compacted or not conversation_ids:
            return {"compacted_topics": len(compacted), "tombstones": 0}
        producer = Producer({**self._config, "enable.idempotence": True, "acks": "all"})
        failures: list[str] = []

        def delivered(error: object, _message: object) -> None:
            if error is not None:
                failures.append(str(error))

        for topic in compacted:
            for conversation_id in conversation_ids:
                producer.produce(
                    topic, key=conversation_id.encode(), value=None, on_delivery=delivered
                )
        if producer.flush(self._timeout) or failures:
            raise Unavailable("Kafka did not acknowledge every tombstone")
        return {
            "compacted_topics": len(compacted),
            "tombstones": len(compacted) * len(conversation_ids),
        }

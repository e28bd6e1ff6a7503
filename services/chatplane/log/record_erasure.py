"""Removing a user's records from the message log (erasure and retention, docs/privacy.md).

Every chatplane topic is keyed by conversation id, so a user's records are the records of
their conversations. The embedded log deletes them from its SQLite file. Kafka cannot delete
single records: on a compacted topic a tombstone (the key with a null value) makes the broker
drop the key's earlier records at the next compaction; on the other topics (every chatplane
topic by default, `cleanup.policy=delete`) the records stay until the topic's retention
deletes their segment, and crypto-shredding (the user's destroyed data key) makes them
unreadable until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from chatplane.common.errors import Unavailable

_IN_CHUNK: Final = 500


class LogRecordEraser(Protocol):
    """Removes the records of some conversations from every topic of the log."""

    async def erase_conversations(self, conversation_ids: Collection[str]) -> dict[str, int]:
        """Removes (or tombstones) the records keyed by these conversation ids; counts per
        kind of removal. Idempotent."""
        ...


class EmbeddedLogEraser:
    """Deletes records from the embedded log's SQLite file at `path`."""

    def __init__(self, path: Path, *, busy_timeout: float = 10.0) -> None:
        self._path = path
        self._busy_timeout = busy_timeout

    async def erase_conversations(self, conversation_ids: Collection[str]) -> dict[str, int]:
        keys = sorted(
            {conversation_id.encode() for conversation_id in conversation_ids if conversation_id}
        )
        if not keys or not self._path.exists():
            return {"log_records": 0}
        return await asyncio.to_thread(self._delete, keys)

    def _delete(self, keys: Sequence[bytes]) -> dict[str, int]:
        try:
            connection = sqlite3.connect(self._path, timeout=self._busy_timeout)
        except sqlite3.Error as error:
            raise Unavailable("the message log is unavailable") from error
        try:
            # Deleted pages are overwritten with zeros, not left readable in the file.
            connection.execute("PRAGMA secure_delete = ON")
            deleted = 0
            with connection:
                for start in range(0, len(keys), _IN_CHUNK):
                    chunk = keys[start : start + _IN_CHUNK]
                    marks = ", ".join("?" * len(chunk))
                    deleted += connection.execute(
                        f"DELETE FROM log_records WHERE key IN ({marks})", chunk
                    ).rowcount
            with contextlib.suppress(sqlite3.Error):
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return {"log_records": deleted}
        except sqlite3.OperationalError as error:
            # A table that does not exist yet: nothing was ever logged.
            if "no such table" in str(error):
                return {"log_records": 0}
            raise Unavailable("the message log is unavailable") from error
        finally:
            connection.close()


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

"""Wires erasure and retention into the Persistence process (docs/privacy.md): the channel to
MemoryService, the message log's record eraser of the profile, the erasure jobs (unfinished
ones resumed at start) and the retention sweep."""

from __future__ import annotations

import asyncio
import contextlib

from chatplane.common.server import internal_channel
from chatplane.common.settings import Settings
from chatplane.common.tls import TlsCredentials
from chatplane.common.topics import (
    HANDOFF_TOPIC,
    MEMORY_DLQ_TOPIC,
    MESSAGES_DLQ_TOPIC,
    MESSAGES_TOPIC,
)
from chatplane.internal.v1 import memory_pb2_grpc
from chatplane.log.factory import postgres_dsn
from chatplane.log.record_erasure import KafkaLogEraser, LogRecordEraser, PostgresLogEraser
from chatplane.persistence.erasure_job import ErasureJobs, UserKeyShredder
from chatplane.persistence.memory_eraser import MemoryServiceEraser
from chatplane.persistence.retention import RetentionSweeper
from chatplane.persistence.store.base import ConversationStore

LOG_TOPICS = (MESSAGES_TOPIC, MESSAGES_DLQ_TOPIC, MEMORY_DLQ_TOPIC, HANDOFF_TOPIC)
"""Every topic that holds records keyed by conversation id."""


def log_record_eraser(settings: Settings) -> LogRecordEraser:
    """The embedded log's tables in PostgreSQL, or Kafka's compacted topics in the cluster
    profile."""
    if settings.profile == "cluster":
        return KafkaLogEraser(
            settings.kafka_bootstrap.strip(),
            LOG_TOPICS,
            timeout=settings.log_append_timeout_seconds,
        )
    return PostgresLogEraser(postgres_dsn(settings))


class ErasureWiring:
    """The erasure and retention parts of one Persistence process."""

    def __init__(
        self,
        settings: Settings,
        store: ConversationStore,
        tls: TlsCredentials | None,
        shredder: UserKeyShredder | None = None,
    ) -> None:
        self._channel = internal_channel(settings.memory_address, tls)
        memory = MemoryServiceEraser(
            memory_pb2_grpc.MemoryServiceStub(self._channel),
            settings.internal_call_timeout_seconds,
        )
        log = log_record_eraser(settings)
        self.jobs = ErasureJobs(
            store,
            memory=memory,
            log=log,
            shredder=shredder,
        )
        self.sweeper = RetentionSweeper(
            store, memory, log, interval=settings.retention_sweep_interval_seconds
        )
        self._resume: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Resumes unfinished erasures and starts the retention sweep, in the background."""
        self._resume = asyncio.create_task(self.jobs.resume_until_done(), name="erasure-resume")
        self.sweeper.start()

    async def stop(self) -> None:
        """Stops both and closes the channel to MemoryService."""
        await self.sweeper.stop()
        if self._resume is not None:
            self._resume.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resume
        await self._channel.close()

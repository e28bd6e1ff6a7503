"""Wires the Persistence process together: settings → store, message log, consumer task, one
small servicer per service (turns, conversations, identity, audit, quota, handoff, analytics,
privacy, variant registry, data keys), all on one server until SIGTERM, and erasure and
retention (docs/privacy.md): the channel to MemoryService, the message log's record eraser of
the profile, the erasure jobs (unfinished ones resumed at start) and the retention sweep."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import grpc

from chatplane import audit
from chatplane.audit.recorder import AuditRecorder
from chatplane.common.server import internal_channel, serve
from chatplane.common.settings import Settings
from chatplane.common.tls import TlsCredentials, load_tls
from chatplane.common.topics import (
    HANDOFF_TOPIC,
    MEMORY_DLQ_TOPIC,
    MESSAGES_DLQ_TOPIC,
    MESSAGES_TOPIC,
)
from chatplane.crypto.data_key_servicer import DataKeyServicer
from chatplane.crypto.factory import store_key_source, store_keyring
from chatplane.crypto.keyring import Keyring, StoreKeySource
from chatplane.crypto.sealed_store import sealed_store
from chatplane.internal.v1 import (
    analytics_pb2_grpc,
    audit_pb2_grpc,
    conversation_pb2_grpc,
    data_key_pb2_grpc,
    handoff_pb2_grpc,
    identity_pb2_grpc,
    memory_pb2_grpc,
    privacy_pb2_grpc,
    quota_pb2_grpc,
    turn_pb2_grpc,
    variant_registry_pb2_grpc,
)
from chatplane.log.factory import open_message_log, postgres_dsn
from chatplane.log.observed import LagReporter
from chatplane.log.record_erasure import KafkaLogEraser, LogRecordEraser, PostgresLogEraser
from chatplane.persistence.analytics_servicer import AnalyticsServicer
from chatplane.persistence.audit_servicer import AuditServicer
from chatplane.persistence.consumer import CONSUMER_GROUP, BatchConsumer, BatchStored
from chatplane.persistence.conversation_servicer import ConversationServicer
from chatplane.persistence.erasure_job import ErasureJobs, UserKeyShredder
from chatplane.persistence.handoff_servicer import HandoffServicer
from chatplane.persistence.identity_servicer import IdentityServicer
from chatplane.persistence.memory_eraser import MemoryServiceEraser
from chatplane.persistence.privacy_servicer import PrivacyServicer
from chatplane.persistence.quota_servicer import QuotaServicer
from chatplane.persistence.recent_messages import BatchWait
from chatplane.persistence.registry_servicer import VariantRegistryServicer
from chatplane.persistence.retention import RetentionSweeper
from chatplane.persistence.store.base import ConversationStore
from chatplane.persistence.store.factory import open_store
from chatplane.persistence.turn_servicer import TurnServicer

_log = logging.getLogger(__name__)

NAME = "persistence"
"""The service's name in its ready line and logs."""


# Every service this process serves, with how to add it to a server: the full names go to
# health and reflection (docs/api.md lists them).
SERVICES: tuple[tuple[str, Callable[[Any, grpc.aio.Server], None]], ...] = (
    ("TurnService", turn_pb2_grpc.add_TurnServiceServicer_to_server),
    ("ConversationService", conversation_pb2_grpc.add_ConversationServiceServicer_to_server),
    ("IdentityService", identity_pb2_grpc.add_IdentityServiceServicer_to_server),
    ("AuditService", audit_pb2_grpc.add_AuditServiceServicer_to_server),
    ("QuotaService", quota_pb2_grpc.add_QuotaServiceServicer_to_server),
    ("HandoffService", handoff_pb2_grpc.add_HandoffServiceServicer_to_server),
    ("AnalyticsService", analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server),
    ("PrivacyService", privacy_pb2_grpc.add_PrivacyServiceServicer_to_server),
    (
        "VariantRegistryService",
        variant_registry_pb2_grpc.add_VariantRegistryServiceServicer_to_server,
    ),
    ("DataKeyService", data_key_pb2_grpc.add_DataKeyServiceServicer_to_server),
)
PACKAGE = "chatplane.internal.v1"
SERVICE_NAMES = tuple(f"{PACKAGE}.{name}" for name, _ in SERVICES)
"""The full names of Persistence's services, for health, reflection and callers' checks."""


def servicers(
    store: ConversationStore,
    settings: Settings,
    keys: StoreKeySource,
    keyring: Keyring,
    erasure: ErasureJobs,
    stored: BatchWait | None = None,
) -> dict[str, Any]:
    """One servicer per service, by service name; `store` is the sealed store
    (docs/security.md); `stored` wakes reads waiting for a turn's messages (the consumer's
    batches; without it they poll)."""
    quota = QuotaServicer(store.quota)
    return {
        "TurnService": TurnServicer(store, quota, stored or BatchStored()),
        "ConversationService": ConversationServicer(store),
        "IdentityService": IdentityServicer(store.api_keys),
        "AuditService": AuditServicer(store.audit),
        "QuotaService": quota,
        "HandoffService": HandoffServicer(store.handoffs),
        "AnalyticsService": AnalyticsServicer(store, settings),
        "PrivacyService": PrivacyServicer(store, erasure),
        "VariantRegistryService": VariantRegistryServicer(store.registry),
        "DataKeyService": DataKeyServicer(keys, keyring),
    }


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
            store.erasures,
            memory=memory,
            log=log,
            shredder=shredder,
        )
        self.sweeper = RetentionSweeper(
            store.retention, memory, log, interval=settings.retention_sweep_interval_seconds
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


async def run(settings: Settings) -> None:
    """Serve Persistence's services and consume the message log until SIGTERM/SIGINT."""
    tls = load_tls(settings)
    store = await open_store(settings)
    # Personal text sealed at rest with per-user data keys (docs/security.md).
    data_keys = store_key_source(settings, store)
    keyring = store_keyring(settings, data_keys)
    store = sealed_store(store, keyring)
    log = open_message_log(settings)
    log_consumer = log.consumer(CONSUMER_GROUP, [MESSAGES_TOPIC])
    dead_letters = log.producer()
    consumer = BatchConsumer(
        log_consumer,
        dead_letters,
        store,
        max_records=settings.batch_max_records,
        max_wait=settings.batch_max_wait_seconds,
    )
    # Erasure (its first step destroys the user's data key) and retention (docs/privacy.md).
    erasure = ErasureWiring(settings, store, tls, shredder=keyring)
    by_service = servicers(store, settings, data_keys, keyring, erasure.jobs, consumer.stored)
    # This process's audit.record(...) appends straight to the store's chain (docs/security.md).
    recorder = AuditRecorder(
        store.audit,
        max_batch=settings.audit_batch_max_records,
        flush_seconds=settings.audit_flush_seconds,
        max_pending=max(settings.audit_max_pending, settings.audit_batch_max_records),
    )
    recorder.start()
    audit.install(recorder)
    lag = LagReporter(log_consumer, CONSUMER_GROUP, settings.metrics_lag_interval_seconds)

    def register(server: grpc.aio.Server) -> None:
        for name, add in SERVICES:
            add(by_service[name], server)

    stopped = False

    async def shut_down() -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        await lag.stop()
        await erasure.stop()
        # The consumer before what it uses: it may still be storing a batch or committing.
        await consumer.stop(grace=settings.drain_grace_seconds)
        await log_consumer.close()
        await dead_letters.close()
        await recorder.stop()
        await store.close()
        _log.info("consumer stopped", extra=asdict(consumer.counters))

    consumer.start()
    lag.start()
    erasure.start()
    try:
        await serve(
            name=NAME,
            host=settings.host,
            port=settings.persistence_port,
            service_names=list(SERVICE_NAMES),
            register=register,
            drain_grace_seconds=settings.drain_grace_seconds,
            on_stop=shut_down,
            tls=tls,
        )
    finally:
        # Also after a failed start (a port in use), when serve() never calls on_stop.
        await shut_down()

"""Wires the Persistence service together: settings → store, message log, consumer task and
servicer, served by the common gRPC bootstrap until SIGTERM."""

from __future__ import annotations

import logging
from dataclasses import asdict

import grpc

from chatplane import audit
from chatplane.audit.recorder import AuditRecorder
from chatplane.common.server import serve
from chatplane.common.settings import Settings
from chatplane.common.tls import load_tls
from chatplane.common.topics import MESSAGES_TOPIC
from chatplane.crypto.data_key_servicer import DataKeyRpcs
from chatplane.crypto.factory import store_key_source, store_keyring
from chatplane.crypto.keyring import Keyring, StoreKeySource
from chatplane.crypto.sealed_store import sealed_store
from chatplane.log.factory import open_message_log
from chatplane.log.observed import LagReporter
from chatplane.persistence.audit_sink import StoreAuditSink
from chatplane.persistence.consumer import CONSUMER_GROUP, BatchConsumer
from chatplane.persistence.dataset_servicer import DatasetPersistenceServicer
from chatplane.persistence.erasure_job import ErasureJobs
from chatplane.persistence.erasure_servicer import ErasureRpcs
from chatplane.persistence.erasure_wiring import ErasureWiring
from chatplane.persistence.export_servicer import ExportRpcs
from chatplane.persistence.servicer import SERVICE_NAME
from chatplane.persistence.store.base import ConversationStore
from chatplane.persistence.store.factory import open_store
from chatplane.v1 import persistence_pb2_grpc

_log = logging.getLogger(__name__)

NAME = "persistence"
"""The service's name in its ready line and logs."""


class PersistenceRpcs(ErasureRpcs, DataKeyRpcs, ExportRpcs, DatasetPersistenceServicer):
    """Every PersistenceService RPC: the base servicer with each feature's RPCs mixed in;
    `store` is the sealed store (docs/security.md)."""

    def __init__(
        self,
        store: ConversationStore,
        settings: Settings,
        keys: StoreKeySource,
        keyring: Keyring,
        erasure: ErasureJobs,
    ) -> None:
        super().__init__(store, settings)
        self._keys = keys
        self._keyring = keyring
        self._erasure = erasure


async def run(settings: Settings) -> None:
    """Serve PersistenceService and consume the message log until SIGTERM/SIGINT."""
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
    servicer = PersistenceRpcs(store, settings, data_keys, keyring, erasure.jobs)
    # This process's audit.record(...) appends straight to the store (docs/security.md).
    recorder = AuditRecorder(
        StoreAuditSink(store),
        max_batch=settings.audit_batch_max_records,
        flush_seconds=settings.audit_flush_seconds,
        max_pending=max(settings.audit_max_pending, settings.audit_batch_max_records),
    )
    recorder.start()
    audit.install(recorder)
    lag = LagReporter(log_consumer, CONSUMER_GROUP, settings.metrics_lag_interval_seconds)

    def register(server: grpc.aio.Server) -> None:
        persistence_pb2_grpc.add_PersistenceServiceServicer_to_server(servicer, server)

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
            service_names=[SERVICE_NAME],
            register=register,
            drain_grace_seconds=settings.drain_grace_seconds,
            on_stop=shut_down,
            tls=tls,
        )
    finally:
        # Also after a failed start (a port in use), when serve() never calls on_stop.
        await shut_down()

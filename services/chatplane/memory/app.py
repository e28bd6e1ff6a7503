"""Wires the Memory process: settings → embedding model, memory index, servicer, and the
indexer of finished turns from the message log."""

from __future__ import annotations

import logging
from pathlib import Path

from chatplane.common.errors import Unavailable
from chatplane.common.server import internal_channel, serve
from chatplane.common.settings import Settings
from chatplane.common.tls import load_tls
from chatplane.common.topics import MESSAGES_TOPIC
from chatplane.crypto.factory import rpc_keyring
from chatplane.internal.v1 import memory_pb2, memory_pb2_grpc
from chatplane.log.factory import open_message_log
from chatplane.log.observed import LagReporter
from chatplane.memory.conversational_memory import ConversationalMemory
from chatplane.memory.document_library import DocumentLibrary, document_limits
from chatplane.memory.embedding import SentenceEmbedder
from chatplane.memory.index.factory import open_memory_index
from chatplane.memory.servicer import MemoryServicer
from chatplane.memory.turn_indexer import CONSUMER_GROUP, TurnIndexer
from chatplane.persistence.client import PersistenceClient
from chatplane.privacy.policy import RedactionPolicy

_log = logging.getLogger(__name__)


async def run(settings: Settings) -> None:
    """Serve MemoryService until SIGTERM, then drain."""
    tls = load_tls(settings)
    model_dir = Path(settings.embedding_model_dir) if settings.embedding_model_dir else None
    embedder = SentenceEmbedder(model_dir, precision=settings.embedding_precision)
    index = open_memory_index(settings)
    try:
        # A database that cannot hold the index (no pgvector, another dimension) stops the
        # start with a ConfigError; one that is down only delays the index to first use.
        await index.open()
    except Unavailable:
        _log.warning("the memory index is unreachable at start; every call retries it")
    redaction = RedactionPolicy.from_settings(settings)
    memory = ConversationalMemory(embedder, index, redaction)
    documents = DocumentLibrary(embedder, index, document_limits(settings), redaction)
    # Finished turns are indexed from the message log, in Memory's own consumer group.
    log = open_message_log(settings)
    log_consumer = log.consumer(CONSUMER_GROUP, [MESSAGES_TOPIC])
    dead_letters = log.producer()
    # The Agent seals what it logs (docs/security.md): keys from Persistence.
    persistence_channel = internal_channel(settings.persistence_address, tls)
    keyring = rpc_keyring(settings, PersistenceClient(persistence_channel))
    indexer = TurnIndexer(
        log_consumer,
        dead_letters,
        memory,
        keyring=keyring,
        max_records=settings.memory_index_batch_max_records,
        max_wait=settings.memory_index_batch_max_wait_seconds,
    )
    indexer.start()
    lag = LagReporter(log_consumer, CONSUMER_GROUP, settings.metrics_lag_interval_seconds)
    lag.start()

    async def stop() -> None:
        await lag.stop()
        await indexer.stop(grace=settings.drain_grace_seconds)
        await log_consumer.close()
        await dead_letters.close()
        await persistence_channel.close()
        await memory.close()
        documents.close()

    await serve(
        name="memory",
        host=settings.host,
        port=settings.memory_port,
        service_names=[memory_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name],
        register=lambda server: memory_pb2_grpc.add_MemoryServiceServicer_to_server(
            MemoryServicer(memory, documents), server
        ),
        drain_grace_seconds=settings.drain_grace_seconds,
        on_stop=stop,
        tls=tls,
    )

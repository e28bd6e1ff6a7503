"""Memory's consumer group on the message log: finished turns' `MessageRecorded` records,
indexed in batches (the loop of `log/batch_consumer.py`). Each batch: decode, open the sealed
texts with their owners' data keys, embed every new text in ONE call, write the index, and only
then commit the offsets. Idempotent by message id (a batch delivered again is neither embedded
nor written again); a record that can never be indexed goes to the memory dead-letter topic; a
record whose owner's data key was destroyed (an erased user) is skipped."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from chatplane.common.topics import MEMORY_DLQ_TOPIC
from chatplane.crypto.envelope import KeyDestroyed, SealedTextError
from chatplane.crypto.keyring import Keyring
from chatplane.log import ConsumedRecord, MessageLogConsumer, MessageLogProducer
from chatplane.log.batch_consumer import LogBatchConsumer, Retrying
from chatplane.memory import metrics
from chatplane.memory.conversational_memory import (
    ConversationalMemory,
    OwnedMessage,
    RememberedMessage,
)
from chatplane.persistence.consumer import decode_messages
from chatplane.persistence.store.base import Message

_log = logging.getLogger(__name__)

CONSUMER_GROUP = "chatplane-memory"
"""The Memory service's consumer group on MESSAGES_TOPIC."""


class TurnIndexer:
    """The indexing consumer between `start()` and `stop()`; `indexed` and `skipped` count
    records since start."""

    def __init__(
        self,
        log_consumer: MessageLogConsumer,
        dead_letters: MessageLogProducer,
        memory: ConversationalMemory,
        *,
        keyring: Keyring | None,
        max_records: int,
        max_wait: float,
        initial_backoff: float = 0.05,
        max_backoff: float = 5.0,
    ) -> None:
        self._memory = memory
        # The Agent seals the records' text (docs/security.md): opened before indexing.
        self._keyring = keyring
        self.indexed = 0
        self.skipped = 0
        self.dead_lettered = 0
        self._loop = LogBatchConsumer(
            log_consumer,
            dead_letters,
            self,
            group=CONSUMER_GROUP,
            dead_letter_topic=MEMORY_DLQ_TOPIC,
            max_records=max_records,
            max_wait=max_wait,
            on_retry=lambda step: metrics.INDEX_RETRIES.labels(step).inc(),
            initial_backoff=initial_backoff,
            max_backoff=max_backoff,
        )

    def start(self) -> None:
        """Start consuming on a task of the running loop."""
        self._loop.start()

    async def stop(self, grace: float) -> None:
        """Stop consuming; a batch not indexed within `grace` seconds stays uncommitted and
        is delivered again at the next start."""
        await self._loop.stop(grace)

    async def process(
        self, records: Sequence[ConsumedRecord], retrying: Retrying
    ) -> list[tuple[ConsumedRecord, str]]:
        """Index one batch (BatchProcessor); the records to dead-letter."""
        started = time.monotonic()
        decoded, dead = decode_messages(records)

        async def opened() -> tuple[list[OwnedMessage], list[tuple[ConsumedRecord, str]], int]:
            return await self._opened(decoded)

        messages, refused, erased = await retrying("open", opened)
        dead += refused

        async def index() -> int:
            return await self._memory.remember_new(messages)

        indexed = await retrying("index", index)
        now_ms = time.time() * 1000
        for _, record in decoded:
            metrics.INDEXING_LAG.observe(max(0.0, (now_ms - record.timestamp_ms) / 1000))
        skipped = len(records) - len(dead) - indexed
        self.indexed += indexed
        self.skipped += skipped
        self.dead_lettered += len(dead)
        metrics.INDEX_BATCH_RECORDS.observe(len(records))
        metrics.INDEX_BATCH_DURATION.observe(time.monotonic() - started)
        metrics.INDEX_RECORDS.labels("indexed").inc(indexed)
        metrics.INDEX_RECORDS.labels("skipped").inc(skipped)
        metrics.INDEX_RECORDS.labels("dead_lettered").inc(len(dead))
        _log.debug(
            "batch indexed",
            extra={"records": len(records), "indexed": indexed, "erased": erased},
        )
        return dead

    async def _opened(
        self, decoded: Sequence[tuple[Message, ConsumedRecord]]
    ) -> tuple[list[OwnedMessage], list[tuple[ConsumedRecord, str]], int]:
        """The decoded messages with their texts opened, the records whose text never opens
        (dead letters), and how many were left out because their owner's key is destroyed.
        A key that cannot be fetched now (Persistence down) raises: the step is retried."""
        messages: list[OwnedMessage] = []
        dead: list[tuple[ConsumedRecord, str]] = []
        erased = 0
        for message, record in decoded:
            owner = message.owner
            text = message.text
            if self._keyring is not None and text:
                try:
                    text = await self._keyring.open(
                        owner.tenant_id, owner.user_id, text, message.message_id
                    )
                except KeyDestroyed:
                    # An erased user: their records stay unreadable, nothing to index.
                    erased += 1
                    continue
                except SealedTextError as error:
                    dead.append((record, f"text does not open: {type(error).__name__}"))
                    continue
            messages.append(
                OwnedMessage(
                    owner.tenant_id,
                    owner.user_id,
                    message.conversation_id,
                    RememberedMessage(
                        message_id=message.message_id,
                        role=message.role.value,
                        text=text,
                        created_at_ms=int(message.create_time.timestamp() * 1000),
                    ),
                )
            )
        return messages, dead, erased

"""The log → store consumer: `MessageRecorded` records in batches (the loop of
`log/batch_consumer.py`), each batch stored in one transaction, records that can never be
stored dead-lettered, and offsets committed only after the database has committed, so every
acknowledged message is stored exactly once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.message import DecodeError

from chatplane.common.ids import is_valid_id
from chatplane.common.telemetry import tracer
from chatplane.common.timestamps import datetime_of
from chatplane.common.topics import MESSAGE_SCHEMA_VERSION, MESSAGES_DLQ_TOPIC
from chatplane.internal.v1 import events_pb2
from chatplane.log import ConsumedRecord, MessageLogConsumer, MessageLogProducer
from chatplane.log.batch_consumer import LogBatchConsumer, Retrying
from chatplane.persistence import metrics
from chatplane.persistence.protos import FINISH_REASONS, ROLES, STATUSES
from chatplane.persistence.store.answer_deltas import valid_delta_ends
from chatplane.persistence.store.answer_metrics import DEFAULT_VARIANT
from chatplane.persistence.store.base import (
    ConversationStore,
    Message,
    MessagesRejected,
    Owner,
    Role,
)
from chatplane.v1 import resources_pb2

_log = logging.getLogger(__name__)

CONSUMER_GROUP = "chatplane-persistence"
"""The Persistence service's consumer group on MESSAGES_TOPIC."""

# The stored forms of a record's enums: protos.py's maps reversed. An operator's reply is
# stored as the conversation's other side, with its author.
_ROLES = {proto: role for role, proto in ROLES.items()}
_ROLES[resources_pb2.ROLE_OPERATOR] = Role.ASSISTANT
_STATUSES = {proto: status for status, proto in STATUSES.items()}
_FINISH_REASONS = {proto: reason for reason, proto in FINISH_REASONS.items()}


# The A/B variant fields of a record in their stored form (docs/variants.md): an assistant
# message without a variant is "default"; a latency that is absent or negative (a broken
# record) is stored as unmeasured rather than losing the message. Longer variant identifiers
# are cut: NAME@VERSION fits easily.
_MAX_VARIANT_CHARS = 200


def _millis(recorded: events_pb2.MessageRecorded, field: str) -> int | None:
    """A latency of an assistant message's record (None for a user's)."""
    is_answer = recorded.message.role == resources_pb2.ROLE_ASSISTANT
    if not is_answer or not recorded.HasField(field):  # type: ignore[arg-type]
        return None
    value: int = getattr(recorded, field)
    return value if value >= 0 else None


class InvalidRecord(Exception):
    """A record that can never be stored; `reason` goes into the dead-letter header."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_message(record: ConsumedRecord) -> Message:
    """The stored form of one `MessageRecorded` record, or InvalidRecord saying why not."""
    try:
        recorded = events_pb2.MessageRecorded.FromString(record.value)
    except DecodeError as error:
        raise InvalidRecord("undecodable: not a MessageRecorded") from error
    if recorded.schema_version != MESSAGE_SCHEMA_VERSION:
        raise InvalidRecord(f"unsupported schema_version {recorded.schema_version}")
    if not recorded.tenant_id:
        raise InvalidRecord("missing tenant_id")
    if not recorded.user_id:
        raise InvalidRecord("missing user_id")
    if not recorded.HasField("message"):
        raise InvalidRecord("missing message")
    message = recorded.message
    for field in ("message_id", "conversation_id"):
        if not is_valid_id(getattr(message, field)):
            raise InvalidRecord(f"missing or invalid message.{field}")
    if message.reply_to_message_id and not is_valid_id(message.reply_to_message_id):
        raise InvalidRecord("invalid message.reply_to_message_id")
    # Absent in records written before conversation trees: stored as NULL (a linear chain).
    parent = message.parent_message_id if message.HasField("parent_message_id") else None
    if parent and not is_valid_id(parent):
        raise InvalidRecord("invalid message.parent_message_id")
    role = _ROLES.get(message.role)
    if role is None:
        raise InvalidRecord(f"invalid message.role {message.role}")
    is_operator = message.role == resources_pb2.ROLE_OPERATOR
    if is_operator and not message.operator_id:
        raise InvalidRecord("missing message.operator_id of an operator reply")
    status = _STATUSES.get(message.status)
    if status is None:
        raise InvalidRecord(f"invalid message.status {message.status}")
    finish_reason = _FINISH_REASONS.get(message.finish_reason)
    if finish_reason is None:
        raise InvalidRecord(f"invalid message.finish_reason {message.finish_reason}")
    if message.usage.input_tokens < 0 or message.usage.output_tokens < 0:
        raise InvalidRecord("negative message.usage")
    return Message(
        message_id=message.message_id,
        conversation_id=message.conversation_id,
        owner=Owner(recorded.tenant_id, recorded.user_id),
        role=role,
        text=message.text,
        status=status,
        create_time=_create_time(message, record.timestamp_ms),
        model=message.model,
        reply_to_message_id=message.reply_to_message_id,
        finish_reason=finish_reason,
        input_tokens=message.usage.input_tokens,
        output_tokens=message.usage.output_tokens,
        client_message_id=message.client_message_id,
        delta_ends=valid_delta_ends(recorded.delta_ends, message.text),
        parent_message_id=parent,
        variant=(
            recorded.variant[:_MAX_VARIANT_CHARS] or DEFAULT_VARIANT
            if message.role == resources_pb2.ROLE_ASSISTANT
            else ""
        ),
        first_token_ms=_millis(recorded, "first_token_ms"),
        duration_ms=_millis(recorded, "duration_ms"),
        operator_id=message.operator_id if is_operator else "",
    )


def decode_messages(
    records: Sequence[ConsumedRecord],
) -> tuple[list[tuple[Message, ConsumedRecord]], list[tuple[ConsumedRecord, str]]]:
    """Each record decoded (with its record), and the records to dead-letter with the reason."""
    decoded: list[tuple[Message, ConsumedRecord]] = []
    dead: list[tuple[ConsumedRecord, str]] = []
    for record in records:
        try:
            decoded.append((decode_message(record), record))
        except InvalidRecord as invalid:
            dead.append((record, invalid.reason))
        except Exception as error:
            # A bug of ours on one record must not block the topic: park it (the record is
            # kept intact in the dead-letter topic, to replay once fixed).
            _log.exception("record decoding failed", extra={"offset": record.offset})
            dead.append((record, f"decoding failed: {type(error).__name__}"))
    return decoded, dead


def _create_time(message: resources_pb2.Message, log_timestamp_ms: int) -> datetime:
    # A message without a create time is still worth keeping: the time the log accepted it
    # is the closest truth there is.
    if not message.HasField("create_time"):
        return datetime.fromtimestamp(log_timestamp_ms / 1000, UTC)
    try:
        return datetime_of(message.create_time)
    except (ValueError, OverflowError) as error:
        raise InvalidRecord("invalid message.create_time") from error


@dataclass(slots=True)
class ConsumerCounters:
    """Running totals since start, for metrics."""

    batches: int = 0
    records_stored: int = 0
    # Delivered again (already stored) or recorded for a deleted conversation.
    records_skipped: int = 0
    records_dead_lettered: int = 0
    retries: int = 0


class BatchConsumer:
    """Persistence's consumer group on MESSAGES_TOPIC: the log's batch loop with the store
    as its processor, between `start()` and `stop()`.

    Each batch: poll (size or time, whichever first) → decode → one store transaction →
    dead-letter → commit offsets. A failing store, log or dead-letter append is retried with
    capped exponential backoff and never skipped; nothing is committed until the batch is
    stored, so a crash at any point only means the batch is delivered (and deduplicated) again.
    Every batch stored sets `stored`'s waiters free (readers waiting for a turn to be stored).
    """

    def __init__(
        self,
        log_consumer: MessageLogConsumer,
        dead_letters: MessageLogProducer,
        store: ConversationStore,
        *,
        max_records: int,
        max_wait: float,
        append_timeout: float = 10.0,
        initial_backoff: float = 0.05,
        max_backoff: float = 5.0,
    ) -> None:
        self._store = store
        self.counters = ConsumerCounters()
        self.stored = BatchStored()
        self._loop = LogBatchConsumer(
            log_consumer,
            dead_letters,
            self,
            group=CONSUMER_GROUP,
            dead_letter_topic=MESSAGES_DLQ_TOPIC,
            max_records=max_records,
            max_wait=max_wait,
            on_retry=self._count_retry,
            append_timeout=append_timeout,
            initial_backoff=initial_backoff,
            max_backoff=max_backoff,
        )

    def start(self) -> None:
        """Start consuming on a task of the running loop."""
        self._loop.start()

    async def stop(self, grace: float) -> None:
        """Stop consuming: a batch under way gets up to `grace` seconds to be stored and
        committed, otherwise it is abandoned uncommitted (and delivered again next start)."""
        await self._loop.stop(grace)

    async def run(self) -> None:
        """Consume until stop() or cancellation."""
        await self._loop.run()

    async def process_batch(self, records: Sequence[ConsumedRecord]) -> None:
        """Store one polled batch, dead-letter what cannot be stored, then commit its offsets."""
        await self._loop.process_batch(records)

    async def process(
        self, records: Sequence[ConsumedRecord], retrying: Retrying
    ) -> list[tuple[ConsumedRecord, str]]:
        """The store step of a batch (BatchProcessor): decode, write in one transaction; the
        records to dead-letter."""
        started = time.monotonic()
        pending, dead = decode_messages(records)
        stored = 0
        write_started = time.perf_counter()
        with tracer().start_as_current_span(
            "store batch", attributes={"db.operation.batch.size": len(pending)}
        ):
            while pending:
                stored, rejected = await retrying("store", self._writer(pending))
                if rejected is None:
                    break
                # Nothing was written: dead-letter the refused ones and store the rest.
                dead += [(pending[i][1], reason) for i, reason in rejected.reasons.items()]
                pending = [p for i, p in enumerate(pending) if i not in rejected.reasons]
        metrics.DB_WRITE_DURATION.observe(time.perf_counter() - write_started)
        self.stored.notify()
        self.counters.batches += 1
        self.counters.records_stored += stored
        self.counters.records_skipped += len(pending) - stored
        self.counters.records_dead_lettered += len(dead)
        metrics.BATCH_RECORDS.observe(len(records))
        metrics.BATCH_DURATION.observe(time.monotonic() - started)
        metrics.RECORDS.labels("stored").inc(stored)
        metrics.RECORDS.labels("skipped").inc(len(pending) - stored)
        metrics.RECORDS.labels("dead_lettered").inc(len(dead))
        _log.debug(
            "batch stored",
            extra={
                "records": len(records),
                "stored": stored,
                "dead_lettered": len(dead),
                "seconds": round(time.monotonic() - started, 4),
            },
        )
        return dead

    def _writer(
        self, pending: Sequence[tuple[Message, ConsumedRecord]]
    ) -> Callable[[], Awaitable[tuple[int, MessagesRejected | None]]]:
        messages = [m for m, _ in pending]

        async def write() -> tuple[int, MessagesRejected | None]:
            # A refusal is the store's verdict on some records, not a failure to retry.
            try:
                return await self._store.write_messages(messages), None
            except MessagesRejected as rejected:
                return 0, rejected

        return write

    def _count_retry(self, step: str) -> None:
        self.counters.retries += 1
        metrics.RETRIES.labels(step).inc()


class BatchStored:
    """Wakes whoever waits for the next batch to be stored by this process (a reader waiting
    for a turn's messages); a waiter on another replica's batches polls instead."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """A batch was stored (committed to the database)."""
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Returns when the next batch is stored, or after `timeout` seconds."""
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return

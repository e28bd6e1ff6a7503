"""The log → store loop: consumes `MessageRecorded` records in batches, stores each batch in one
transaction, dead-letters records that can never be stored, and commits offsets only after
the database has committed, so every acknowledged message is stored exactly once."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf.message import DecodeError
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import Link, SpanKind

from chatplane.common.ids import is_valid_id
from chatplane.common.telemetry import tracer, tracing_enabled
from chatplane.common.timestamps import datetime_of
from chatplane.common.topics import MESSAGE_SCHEMA_VERSION, MESSAGES_DLQ_TOPIC
from chatplane.internal.v1 import events_pb2
from chatplane.log import ConsumedRecord, LogRecord, MessageLogConsumer, MessageLogProducer
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

_T = TypeVar("_T")

DEAD_LETTER_REASON_HEADER = "x-dlq-reason"
"""Header of a dead-lettered record saying why it could not be stored."""
DEAD_LETTER_SOURCE_HEADER = "x-dlq-source"
"""`topic/partition/offset` of the dead-lettered record, to find it in the source topic."""
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


class _BatchAbandoned(Exception):
    """Stop was requested while a batch was waiting to retry; its offsets stay uncommitted."""


class BatchConsumer:
    """Runs the loop on its own task between `start()` and `stop()`.

    Each batch: poll (size or time, whichever first) → decode → one store transaction →
    dead-letter → commit offsets. A failing store, log or dead-letter append is retried with
    capped exponential backoff and never skipped; nothing is committed until the batch is
    stored, so a crash at any point only means the batch is delivered (and deduplicated) again.
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
        self._log_consumer = log_consumer
        self._dead_letters = dead_letters
        self._store = store
        self._max_records = max_records
        self._max_wait = max_wait
        self._append_timeout = append_timeout
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self.counters = ConsumerCounters()
        self._stop_requested = asyncio.Event()
        self._in_batch = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start consuming on a task of the running loop."""
        if self._task is not None:
            raise RuntimeError("the consumer is started already")
        self._task = asyncio.create_task(self.run(), name="persistence-consumer")
        self._task.add_done_callback(_report_exit)

    async def stop(self, grace: float) -> None:
        """Stop consuming: a batch under way gets up to `grace` seconds to be stored and
        committed, otherwise it is abandoned uncommitted (and delivered again next start)."""
        self._stop_requested.set()
        task = self._task
        if task is None or task.done():
            return
        if not self._in_batch:
            # Polling: nothing taken from the log is lost by cancelling a poll.
            task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
        except TimeoutError:
            task.cancel()
        except asyncio.CancelledError:
            # Swallow the consumer task's own cancellation, never our caller's.
            current = asyncio.current_task()
            if not task.cancelled() or (current is not None and current.cancelling()):
                raise
        # Wait for the cancelled task to unwind, swallowing only its own cancellation.
        await asyncio.gather(task, return_exceptions=True)

    async def run(self) -> None:
        """Consume until stop() or cancellation."""
        try:
            while not self._stop_requested.is_set():
                records = await self._retrying(
                    "poll",
                    lambda: self._log_consumer.poll_batch(self._max_records, self._max_wait),
                )
                if not records:
                    continue
                self._in_batch = True
                try:
                    await self.process_batch(records)
                finally:
                    self._in_batch = False
        except _BatchAbandoned:
            _log.info("consumer stopped while retrying; the batch stays uncommitted")

    async def process_batch(self, records: Sequence[ConsumedRecord]) -> None:
        """Store one polled batch, dead-letter what cannot be stored, then commit its offsets.

        With tracing on, the batch is one CONSUMER span (a trace of its own) linked to the
        span that produced each record (from the record's traceparent header)."""
        span = tracer().start_span(
            "process chatplane.messages",
            kind=SpanKind.CONSUMER,
            links=producer_links(records) if tracing_enabled() else None,
            attributes={
                "messaging.operation.type": "process",
                "messaging.destination.name": records[0].topic if records else "",
                "messaging.consumer.group.name": CONSUMER_GROUP,
                "messaging.batch.message_count": len(records),
            },
        )
        with trace.use_span(span, end_on_exit=True):
            await self._process_batch(records)

    async def _process_batch(self, records: Sequence[ConsumedRecord]) -> None:
        started = time.monotonic()
        pending: list[tuple[Message, ConsumedRecord]] = []
        dead: list[tuple[ConsumedRecord, str]] = []
        for record in records:
            try:
                pending.append((decode_message(record), record))
            except InvalidRecord as invalid:
                dead.append((record, invalid.reason))
            except Exception as error:
                # A bug of ours on one record must not block the topic: park it (the record
                # is kept intact in the dead-letter topic, to replay once fixed).
                _log.exception("record decoding failed", extra={"offset": record.offset})
                dead.append((record, f"decoding failed: {type(error).__name__}"))
        stored = 0
        write_started = time.perf_counter()
        with tracer().start_as_current_span(
            "store batch", attributes={"db.operation.batch.size": len(pending)}
        ):
            while pending:
                write = functools.partial(self._store.write_messages, [m for m, _ in pending])
                try:
                    stored = await self._retrying("store", write)
                    break
                except MessagesRejected as rejected:
                    # Nothing was written: dead-letter the refused ones and store the rest.
                    dead += [(pending[i][1], reason) for i, reason in rejected.reasons.items()]
                    pending = [p for i, p in enumerate(pending) if i not in rejected.reasons]
        metrics.DB_WRITE_DURATION.observe(time.perf_counter() - write_started)
        if dead:
            letters = [_dead_letter(record, reason) for record, reason in dead]
            await self._retrying(
                "dead-letter", lambda: self._dead_letters.append(letters, self._append_timeout)
            )
            for record, reason in dead:
                _log.warning(
                    "record dead-lettered",
                    extra={"reason": reason, "topic": record.topic, "offset": record.offset},
                )
        await self._retrying("commit", lambda: self._log_consumer.commit(records))
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

    async def _retrying(self, what: str, operation: Callable[[], Awaitable[_T]]) -> _T:
        """Run `operation` until it succeeds; MessagesRejected is a verdict, not a failure."""
        delay = self._initial_backoff
        while True:
            try:
                return await operation()
            except MessagesRejected:
                raise
            except Exception as error:
                # Never skip a batch: whatever failed is retried until it works or we stop.
                self.counters.retries += 1
                metrics.RETRIES.labels(what).inc()
                _log.warning(
                    "consumer step failed; retrying",
                    extra={"step": what, "error": repr(error), "retry_in": round(delay, 3)},
                )
            # Full jitter keeps several consumers from retrying a recovering store in step.
            if await self._stop_within(random.uniform(0, delay)):
                raise _BatchAbandoned
            delay = min(self._max_backoff, delay * 2)

    async def _stop_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stop_requested.wait(), seconds)
        except TimeoutError:
            return False
        return True


def producer_links(records: Sequence[ConsumedRecord]) -> list[Link]:
    """A link to the span that produced each record (one per distinct span)."""
    links: dict[int, Link] = {}
    for record in records:
        carrier = {k: v.decode("latin-1") for k, v in record.headers if k == "traceparent"}
        if not carrier:
            continue
        span_context = trace.get_current_span(extract(carrier)).get_span_context()
        if span_context.is_valid and span_context.span_id not in links:
            links[span_context.span_id] = Link(span_context)
    return list(links.values())


def _dead_letter(record: ConsumedRecord, reason: str) -> LogRecord:
    headers = (
        *record.headers,
        (DEAD_LETTER_REASON_HEADER, reason.encode()),
        (
            DEAD_LETTER_SOURCE_HEADER,
            f"{record.topic}/{record.partition}/{record.offset}".encode(),
        ),
    )
    return LogRecord(MESSAGES_DLQ_TOPIC, record.key, record.value, headers)


def _report_exit(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.critical("the persistence consumer stopped", exc_info=task.exception())

"""The at-least-once batch loop every consumer group of the message log runs (Persistence's
store writer, Memory's indexer): poll a batch (size or time, whichever first), hand it to the
group's processor, dead-letter what the processor refuses, and commit the offsets only after
that. A failing step is retried with capped exponential backoff and never skipped, so a crash
at any point only means the batch is delivered again (processors are idempotent)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import Link, SpanKind

from chatplane.common.telemetry import tracer, tracing_enabled
from chatplane.log.base import ConsumedRecord, LogRecord, MessageLogConsumer, MessageLogProducer

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

DEAD_LETTER_REASON_HEADER = "x-dlq-reason"
"""Header of a dead-lettered record saying why it could not be processed."""
DEAD_LETTER_SOURCE_HEADER = "x-dlq-source"
"""`topic/partition/offset` of the dead-lettered record, to find it in the source topic."""


class Retrying(Protocol):
    """Runs a named step until it succeeds (or the consumer stops, StopRequested); what a
    processor wraps its writes in."""

    async def __call__(self, step: str, operation: Callable[[], Awaitable[_T]]) -> _T: ...


class BatchProcessor(Protocol):
    """What one consumer group does with a batch."""

    async def process(
        self, records: Sequence[ConsumedRecord], retrying: Retrying
    ) -> list[tuple[ConsumedRecord, str]]:
        """Write the batch (each write step wrapped in `retrying`, so it is never skipped);
        the records that can never be processed, each with the reason, to dead-letter."""
        ...


class StopRequested(Exception):
    """Stop was requested while a batch was waiting to retry; its offsets stay uncommitted."""


class LogBatchConsumer:
    """Runs the loop on its own task between `start()` and `stop()`."""

    def __init__(
        self,
        log_consumer: MessageLogConsumer,
        dead_letters: MessageLogProducer,
        processor: BatchProcessor,
        *,
        group: str,
        dead_letter_topic: str,
        max_records: int,
        max_wait: float,
        on_retry: Callable[[str], None] = lambda _step: None,
        append_timeout: float = 10.0,
        initial_backoff: float = 0.05,
        max_backoff: float = 5.0,
    ) -> None:
        self._log_consumer = log_consumer
        self._dead_letters = dead_letters
        self._processor = processor
        self._group = group
        self._dead_letter_topic = dead_letter_topic
        self._max_records = max_records
        self._max_wait = max_wait
        self._on_retry = on_retry
        self._append_timeout = append_timeout
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._stop_requested = asyncio.Event()
        self._in_batch = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start consuming on a task of the running loop."""
        if self._task is not None:
            raise RuntimeError("the consumer is started already")
        self._task = asyncio.create_task(self.run(), name=f"consumer-{self._group}")
        self._task.add_done_callback(self._report_exit)

    async def stop(self, grace: float) -> None:
        """Stop consuming: a batch under way gets up to `grace` seconds to be processed and
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
                records = await self.retrying(
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
        except StopRequested:
            _log.info("consumer stopped while retrying; the batch stays uncommitted")

    async def process_batch(self, records: Sequence[ConsumedRecord]) -> None:
        """Process one polled batch, dead-letter what cannot be processed, then commit.

        With tracing on, the batch is one CONSUMER span (a trace of its own) linked to the
        span that produced each record (from the record's traceparent header)."""
        span = tracer().start_span(
            f"process {records[0].topic if records else ''}",
            kind=SpanKind.CONSUMER,
            links=producer_links(records) if tracing_enabled() else None,
            attributes={
                "messaging.operation.type": "process",
                "messaging.destination.name": records[0].topic if records else "",
                "messaging.consumer.group.name": self._group,
                "messaging.batch.message_count": len(records),
            },
        )
        with trace.use_span(span, end_on_exit=True):
            dead = await self._processor.process(records, self.retrying)
            if dead:
                letters = [self._dead_letter(record, reason) for record, reason in dead]
                await self.retrying(
                    "dead-letter",
                    lambda: self._dead_letters.append(letters, self._append_timeout),
                )
                for record, reason in dead:
                    _log.warning(
                        "record dead-lettered",
                        extra={
                            "group": self._group,
                            "reason": reason,
                            "topic": record.topic,
                            "offset": record.offset,
                        },
                    )
            await self.retrying("commit", lambda: self._log_consumer.commit(records))

    async def retrying(self, step: str, operation: Callable[[], Awaitable[_T]]) -> _T:
        """Run `operation` until it succeeds (StopRequested when stop() comes first)."""
        delay = self._initial_backoff
        while True:
            try:
                return await operation()
            except Exception as error:
                # Never skip a batch: whatever failed is retried until it works or we stop.
                self._on_retry(step)
                _log.warning(
                    "consumer step failed; retrying",
                    extra={
                        "group": self._group,
                        "step": step,
                        "error": repr(error),
                        "retry_in": round(delay, 3),
                    },
                )
            # Full jitter keeps several consumers from retrying a recovering engine in step.
            if await self._stop_within(random.uniform(0, delay)):
                raise StopRequested
            delay = min(self._max_backoff, delay * 2)

    async def _stop_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stop_requested.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _dead_letter(self, record: ConsumedRecord, reason: str) -> LogRecord:
        headers = (
            *record.headers,
            (DEAD_LETTER_REASON_HEADER, reason.encode()),
            (
                DEAD_LETTER_SOURCE_HEADER,
                f"{record.topic}/{record.partition}/{record.offset}".encode(),
            ),
        )
        return LogRecord(self._dead_letter_topic, record.key, record.value, headers)

    def _report_exit(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            _log.critical(
                "a log consumer stopped", extra={"group": self._group}, exc_info=task.exception()
            )


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

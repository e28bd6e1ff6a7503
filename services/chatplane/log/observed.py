"""Observability of the message log, for every implementation: append latency by topic and
outcome, a PRODUCER span per append whose context goes into each record's `traceparent`
header (so the consumer can link back to it), and a consumer-lag gauge kept fresh by a task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import replace

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from prometheus_client import Gauge, Histogram

from chatplane.common import errors
from chatplane.common.metrics import FAST_BUCKETS
from chatplane.common.telemetry import tracer
from chatplane.common.trace_context import TRACEPARENT, TRACESTATE, outgoing
from chatplane.log.base import (
    LogRecord,
    MessageLog,
    MessageLogConsumer,
    MessageLogProducer,
)

_log = logging.getLogger(__name__)

APPEND_DURATION = Histogram(
    "chatplane_log_append_duration_seconds",
    "Message-log produce latency: append until every record is durably acknowledged",
    ["topic", "outcome"],
    buckets=FAST_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "chatplane_log_consumer_lag_records",
    "Records appended to a consumer group's topics but not yet committed by the group",
    ["group"],
)


def with_trace_headers(record: LogRecord, context: Sequence[tuple[str, str]]) -> LogRecord:
    """The record with its traceparent/tracestate replaced by `context`'s."""
    trace_keys = (TRACEPARENT, TRACESTATE)
    kept = tuple((k, v) for k, v in record.headers if k not in trace_keys)
    added = tuple((k, v.encode()) for k, v in context if k in trace_keys)
    return replace(record, headers=(*kept, *added))


class ObservedProducer(MessageLogProducer):
    """A producer that times appends and, with tracing on, sends each batch under a PRODUCER
    span whose context travels in the records' headers."""

    def __init__(
        self, inner: MessageLogProducer, system: str, *, span_tracer: Tracer | None = None
    ) -> None:
        self._inner = inner
        self._system = system
        self._tracer = span_tracer

    async def append(self, records: Sequence[LogRecord], timeout: float) -> None:
        topic = records[0].topic if records else ""
        started = time.perf_counter()
        outcome = "error"
        span = (self._tracer or tracer()).start_span(
            f"send {topic}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": self._system,
                "messaging.operation.type": "send",
                "messaging.destination.name": topic,
                "messaging.batch.message_count": len(records),
            },
        )
        try:
            if span.is_recording():
                with trace.use_span(span, end_on_exit=False):
                    context = outgoing()
                records = [with_trace_headers(r, context) for r in records]
            await self._inner.append(records, timeout)
            outcome = "ok"
        except errors.Unavailable as error:
            outcome = "unavailable"
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise
        finally:
            span.end()
            APPEND_DURATION.labels(topic, outcome).observe(time.perf_counter() - started)

    async def close(self) -> None:
        await self._inner.close()


class ObservedMessageLog(MessageLog):
    """A message log whose producers are observed."""

    def __init__(self, inner: MessageLog, system: str) -> None:
        self.inner = inner
        self.system = system

    def producer(self) -> MessageLogProducer:
        return ObservedProducer(self.inner.producer(), self.system)

    def consumer(self, group: str, topics: Sequence[str]) -> MessageLogConsumer:
        return self.inner.consumer(group, topics)

    def tail(self, topics: Sequence[str]) -> MessageLogConsumer:
        return self.inner.tail(topics)


class LagReporter:
    """Reads a consumer's lag every `interval` seconds into the lag gauge, until stopped."""

    def __init__(self, consumer: MessageLogConsumer, group: str, interval: float) -> None:
        self._consumer = consumer
        self._gauge = CONSUMER_LAG.labels(group)
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="consumer-lag")

    async def _run(self) -> None:
        while True:
            try:
                self._gauge.set(await self._consumer.lag())
            except Exception as error:
                # The gauge keeps its last value; the log is down or slow, which the append
                # and consumer metrics already show.
                _log.debug("consumer lag not read", extra={"error": type(error).__name__})
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

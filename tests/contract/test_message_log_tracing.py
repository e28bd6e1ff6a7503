"""Trace context through the message log, for every implementation: a record carries the
traceparent of the PRODUCER span that appended it, and the consumer side links back to it."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chatplane.log import LogRecord
from chatplane.log.batch_consumer import producer_links
from chatplane.log.observed import ObservedProducer
from tests.contract.test_message_log import (  # noqa: F401 (fixtures)
    LogUnderTest,
    consume,
    group,
    kafka_bootstrap,
    message_log,
    topic,
)


async def test_a_consumed_record_links_to_the_span_that_produced_it(
    message_log: LogUnderTest,  # noqa: F811
    topic: str,  # noqa: F811
    group: str,  # noqa: F811
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    producer = ObservedProducer(
        message_log.producer(), "test", span_tracer=provider.get_tracer("test")
    )
    consumer = message_log.consumer(group, [topic])
    stale = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = (("traceparent", stale.encode()), ("x-request-id", b"req-1"))
    await producer.append([LogRecord(topic, b"k", b"v", headers), LogRecord(topic, b"k", b"w")], 5)
    records = await consume(consumer, 2, deadline=30)
    [span] = exporter.get_finished_spans()
    assert span.name == f"send {topic}"
    assert span.attributes is not None and span.attributes["messaging.batch.message_count"] == 2
    # The producer span's context replaced the caller's; other headers are kept.
    assert ("x-request-id", b"req-1") in records[0].headers
    assert all(("traceparent", stale.encode()) not in r.headers for r in records)
    links = producer_links(records)
    assert span.context is not None
    assert [(li.context.trace_id, li.context.span_id) for li in links] == [
        (span.context.trace_id, span.context.span_id)
    ]

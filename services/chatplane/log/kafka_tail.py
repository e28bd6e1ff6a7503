"""A Kafka consumer in no group that reads topics from their end (MessageLog.tail): it assigns
itself every partition at the high watermark it finds at its first poll and never commits, so
every process holding one sees every later record (the handoff fan-out to Gateway replicas)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from chatplane.common.errors import Unavailable
from chatplane.log.base import ConsumedRecord, MessageLogConsumer
from chatplane.log.kafka_errors import retriable

if TYPE_CHECKING:
    from chatplane.log.kafka import KafkaTopics

_SLICE = 0.1
"""Longest single blocking librdkafka call: how quickly a poll notices close."""


class KafkaTail(MessageLogConsumer):
    """Reads `topics` from their end at the first poll; all librdkafka calls on one thread."""

    def __init__(
        self,
        config: dict[str, Any],
        topics: KafkaTopics,
        topic_names: Sequence[str],
        *,
        request_timeout: float,
        to_record: Callable[[Message], ConsumedRecord],
    ) -> None:
        self._to_record = to_record
        self._consumer = Consumer(
            {
                **config,
                # librdkafka wants a group id; assign() never joins it and nothing commits.
                "group.id": f"chatplane-tail-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "latest",
                "fetch.wait.max.ms": 100,
            }
        )
        self._topics = topics
        self._topic_names = list(dict.fromkeys(topic_names))
        self._request_timeout = request_timeout
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="chatplane-kafka-tail"
        )
        self._assigned = False
        self._polling: threading.Event | None = None
        self._closed = False

    async def poll_batch(self, max_records: int, max_wait: float) -> list[ConsumedRecord]:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        if self._polling is not None:
            raise RuntimeError("poll_batch is already running on this consumer")
        if self._closed:
            raise Unavailable("the message log consumer is closed")
        deadline = time.monotonic() + max(0.0, max_wait)
        stop = self._polling = threading.Event()
        try:
            return await asyncio.wrap_future(
                self._executor.submit(self._fetch, max_records, deadline, stop)
            )
        except asyncio.CancelledError:
            stop.set()
            raise
        finally:
            self._polling = None

    async def commit(self, records: Sequence[ConsumedRecord]) -> None:
        if self._closed:
            raise Unavailable("the message log consumer is closed")

    async def lag(self) -> int:
        return 0

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._polling is not None:
            self._polling.set()
        try:
            await asyncio.wrap_future(self._executor.submit(self._consumer.close))
        finally:
            self._executor.shutdown(wait=False)

    # Below: on the worker thread.

    def _assign_at_end(self) -> None:
        self._topics.ensure(self._topic_names, self._request_timeout)
        deadline = time.monotonic() + self._request_timeout
        while True:
            try:
                partitions = self._ends(deadline)
                break
            except KafkaException as error:
                # A topic just created has no leader for a moment: try again until the deadline.
                if not retriable(error.args[0]) or time.monotonic() + 0.05 >= deadline:
                    raise Unavailable(
                        f"cannot find the end of the handoff topics: {error}"
                    ) from error
            time.sleep(0.05)
        self._consumer.assign(partitions)
        self._assigned = True

    def _ends(self, deadline: float) -> list[TopicPartition]:
        """Each partition of the topics at its current end (high watermark)."""
        partitions: list[TopicPartition] = []
        for topic in self._topic_names:
            remaining = max(0.1, deadline - time.monotonic())
            found = self._consumer.list_topics(topic, timeout=remaining)
            for partition in sorted(found.topics[topic].partitions):
                remaining = max(0.1, deadline - time.monotonic())
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=remaining
                )
                partitions.append(TopicPartition(topic, partition, high))
        return partitions

    def _fetch(
        self, max_records: int, deadline: float, stop: threading.Event
    ) -> list[ConsumedRecord]:
        if not self._assigned:
            self._assign_at_end()
        batch: list[ConsumedRecord] = []
        while len(batch) < max_records and not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for message in self._consumer.consume(max_records - len(batch), min(remaining, _SLICE)):
                error = message.error()
                if error is None:
                    batch.append(self._to_record(message))
                elif error.fatal():
                    raise Unavailable(f"the handoff tail failed: {error.str()}")
                elif error.code() != KafkaError._PARTITION_EOF:
                    continue  # transient: librdkafka retries by itself
            if batch:
                break  # fan-out wants latency, not batches
        return batch

"""The message log interface: how the Agent hands chat messages to Persistence, shaped like Kafka.

Semantics every implementation keeps (the contract suite in tests/contract checks them):

* ``append`` returns only once every record is durably acknowledged; records with one key
  keep their order. On failure it raises ``Unavailable`` and none or some records may be
  stored, so consumers must be idempotent (they are, by message id).
* A consumer belongs to a group. It starts at the group's committed position (or at the
  earliest record when the group has never committed) and gets every record at least once:
  whatever the group has not committed is delivered again to the group's next consumer.
* Committed positions follow Kafka's convention: the value stored for a (topic, partition)
  is the offset of the NEXT record to consume, i.e. the highest processed offset + 1.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from chatplane.common.closing import AsyncClosable

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class LogRecord:
    """A record a producer appends; records with the same key stay in order."""

    topic: str
    key: bytes
    value: bytes
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    """A record as a consumer sees it, with its position in the log."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: Headers
    timestamp_ms: int


class MessageLogProducer(AsyncClosable):
    """Appends records to the log; safe to share between the tasks of one event loop."""

    # An explicit timeout rather than asyncio.timeout(): implementations hand it down to work
    # they cannot cancel from the event loop (a statement waiting for a
    # PostgreSQL row lock, Kafka's delivery timeout).
    @abc.abstractmethod
    async def append(self, records: Sequence[LogRecord], timeout: float) -> None:
        """Append `records`, returning once every one is durably acknowledged.

        Raises chatplane.common.errors.Unavailable when the log cannot accept them within
        `timeout` seconds or the producer is closed; then none or some may be stored.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish appends under way and release the producer's resources."""


class MessageLogConsumer(AsyncClosable):
    """Reads the topics it was created for as a member of one consumer group."""

    @abc.abstractmethod
    async def poll_batch(self, max_records: int, max_wait: float) -> list[ConsumedRecord]:
        """Return up to `max_records` records not yet returned by this consumer.

        Returns as soon as `max_records` are available, otherwise after `max_wait` seconds
        with what there is (possibly nothing). Records of one partition come in offset order.
        """

    @abc.abstractmethod
    async def commit(self, records: Sequence[ConsumedRecord]) -> None:
        """Mark `records` processed for the group: per (topic, partition), stores the highest
        offset among them + 1 (the next offset to consume, as Kafka does). Like Kafka, this
        overwrites the group's previous commit, so commit batches in the order they were polled.
        """

    @abc.abstractmethod
    async def lag(self) -> int:
        """Records appended to the subscribed topics but not yet committed by this group."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the consumer; anything polled but not committed will be delivered again."""


class MessageLog(abc.ABC):
    """One configured log (tables in PostgreSQL, a Kafka cluster) handing out producers and
    consumers."""

    @abc.abstractmethod
    def producer(self) -> MessageLogProducer:
        """A new producer; the caller closes it."""

    @abc.abstractmethod
    def consumer(self, group: str, topics: Sequence[str]) -> MessageLogConsumer:
        """A new consumer of `topics` in consumer group `group`; the caller closes it."""

    @abc.abstractmethod
    def tail(self, topics: Sequence[str]) -> MessageLogConsumer:
        """A new consumer of `topics` in no group: it starts at the end of every partition
        (fixed by its first poll_batch) and gets every record appended after that; commit
        does nothing and lag is 0. Every holder gets every record: a fan-out, e.g. to each
        Gateway replica (docs/handoff.md). The caller closes it."""

"""The message log on Apache Kafka (confluent-kafka / librdkafka): the cluster-profile
implementation of chatplane.log.base, configured for no loss of acknowledged records.

Producers are idempotent with ``acks=all`` and acknowledge an append only when the broker has
every record; consumers are group members that commit explicitly, so whatever a consumer
polled but did not commit is delivered again to the group. docs/kafka.md explains each choice.

Threads: librdkafka calls that block never run on the event loop. Each producer has one thread
serving delivery reports (``poll``); each consumer has one thread making all of its calls,
because confluent-kafka serializes the calls on one consumer anyway (a commit waits for a
``consume`` in flight on another thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Final

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from chatplane.common.errors import Unavailable
from chatplane.log.base import (
    ConsumedRecord,
    LogRecord,
    MessageLog,
    MessageLogConsumer,
    MessageLogProducer,
)
from chatplane.log.kafka_errors import retriable
from chatplane.log.kafka_tail import KafkaTail

_log = logging.getLogger(__name__)

_SLICE: Final = 0.1
"""Longest single blocking librdkafka call: how quickly a poll notices close or cancellation."""
_TopicPartitionKey = tuple[str, int]
# confluent-kafka's admin module re-exports NewTopic without listing it (hence the ignore on
# its import).

# A commit refused because this member's view of the group is out of date. Retrying without
# polling cannot fix it (rejoining happens inside consume), so the offsets are kept and
# committed again at the end of the next poll, for the partitions this consumer still owns.
_GROUP_CHANGED: Final = frozenset(
    {
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError._ASSIGNMENT_LOST,
    }
)


class KafkaMessageLog(MessageLog):
    """Producers and consumers of the Kafka cluster at `bootstrap` ("host:port,...").

    Topics are created at first use with `partitions` partitions (and the broker's default
    replication factor unless `replication_factor` is given); `topics` names topics to create
    at that moment too, such as a dead-letter topic nothing has written to yet.

    `delivery_timeout` bounds how long librdkafka keeps retrying a record (its
    ``message.timeout.ms``); an append gives up after its own, usually shorter, timeout.
    `session_timeout` is how long a crashed consumer keeps its partitions before the group
    hands them to another member; `max_poll_interval` how long a live one may go without
    polling (processing a batch) before the group takes them away. A consumer's first polls
    wait up to `join_timeout` for it to join its group and fetch what its partitions hold.
    `request_timeout` bounds admin requests (topic creation, lag).
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        partitions: int,
        client_id: str = "chatplane",
        topics: Sequence[str] = (),
        replication_factor: int | None = None,
        delivery_timeout: float = 10.0,
        linger: float = 0.002,
        session_timeout: float = 10.0,
        max_poll_interval: float = 300.0,
        join_timeout: float = 10.0,
        request_timeout: float = 5.0,
        close_timeout: float = 5.0,
    ) -> None:
        if not bootstrap:
            raise ValueError("the Kafka bootstrap servers are not set")
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        if replication_factor is not None and replication_factor < 1:
            raise ValueError("replication_factor must be at least 1")
        if min(delivery_timeout, session_timeout, join_timeout, request_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if linger < 0 or close_timeout < 0:
            raise ValueError("linger and close_timeout must not be negative")
        if max_poll_interval < session_timeout:
            raise ValueError("max_poll_interval must be at least session_timeout")
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._delivery_timeout = delivery_timeout
        self._linger = linger
        self._session_timeout = session_timeout
        self._max_poll_interval = max_poll_interval
        self._join_timeout = join_timeout
        self._request_timeout = request_timeout
        self._close_timeout = close_timeout
        self._topics = KafkaTopics(
            self._common_config(),
            partitions=partitions,
            # -1: the broker's default.replication.factor (KIP-464).
            replication_factor=-1 if replication_factor is None else replication_factor,
            declared=topics,
        )

    @property
    def bootstrap(self) -> str:
        """The bootstrap servers this log connects to."""
        return self._bootstrap

    def producer(self) -> MessageLogProducer:
        config = {
            **self._common_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": self._linger * 1000,
            "message.timeout.ms": math.ceil(self._delivery_timeout * 1000),
            # The Java client's partitioner: a key maps to the same partition whichever
            # language produced it (librdkafka's default, consistent_random, uses CRC32).
            "partitioner": "murmur2_random",
            "compression.type": "lz4",
        }
        return _KafkaProducer(config, self._topics, self._close_timeout)

    def consumer(self, group: str, topics: Sequence[str]) -> MessageLogConsumer:
        if not group or not topics:
            raise ValueError("a consumer needs a group and at least one topic")
        config = {
            **self._common_config(),
            "group.id": group,
            # Offsets are committed explicitly, after the records are processed.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "group.protocol": "classic",
            # Incremental rebalances: a member joining or leaving moves only the partitions
            # that change owner; the others keep being consumed without a pause.
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": math.ceil(self._session_timeout * 1000),
            "heartbeat.interval.ms": max(100, min(3000, math.ceil(self._session_timeout * 100))),
            "max.poll.interval.ms": math.ceil(self._max_poll_interval * 1000),
            # Reports when a partition's end is reached: how a new consumer knows it has
            # fetched what was there before it joined.
            "enable.partition.eof": True,
            # The broker answers a fetch as soon as there is a record; this only bounds an
            # idle fetch, which otherwise delays other requests on the same connection.
            "fetch.wait.max.ms": 100,
        }
        return _KafkaConsumer(
            config,
            self._topics,
            group,
            topics,
            join_timeout=self._join_timeout,
            request_timeout=self._request_timeout,
        )

    def tail(self, topics: Sequence[str]) -> MessageLogConsumer:
        if not topics:
            raise ValueError("a tail needs at least one topic")
        return KafkaTail(
            self._common_config(),
            self._topics,
            topics,
            request_timeout=self._request_timeout,
            to_record=_consumed,
        )

    def _common_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self._bootstrap,
            "client.id": self._client_id,
            "socket.nagle.disable": True,
            # Reconnect to a restarted broker within a second rather than librdkafka's 10 s.
            "reconnect.backoff.max.ms": 1000,
            "logger": _ClientLog(),
        }


class _ClientLog:
    """Where librdkafka's own log lines go (confluent-kafka calls `log`): into the process's
    logging, at most one line per kind (facility and level) every `interval` seconds, since
    a client facing a broker that is down logs a failed connection several times a second."""

    def __init__(self, interval: float = 30.0) -> None:
        self._logger = logging.getLogger(f"{__name__}.librdkafka")
        self._interval = interval
        self._last: dict[tuple[int, str], float] = {}
        self._suppressed: Counter[tuple[int, str]] = Counter()
        self._lock = threading.Lock()

    def log(self, level: int, message: str, facility: str, client: str, text: str) -> None:
        kind = (level, facility)
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -math.inf) < self._interval:
                self._suppressed[kind] += 1
                return
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        self._logger.log(
            level,
            message,
            facility,
            client,
            text,
            extra={"suppressed": suppressed} if suppressed else None,
        )


class _ErrorReporter:
    """Logs librdkafka's non-fatal errors, each kind at most once per `interval`: with a
    broker down it reports a failed connection on every reconnect attempt."""

    def __init__(self, client: str, interval: float = 30.0) -> None:
        self._client = client
        self._interval = interval
        self._last: dict[int, float] = {}
        self._lock = threading.Lock()

    def __call__(self, error: KafkaError) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(error.code(), -math.inf) < self._interval:
                return
            self._last[error.code()] = now
        _log.warning(
            "kafka client error",
            extra={"client": self._client, "code": error.name(), "error": error.str()},
        )


def _unavailable(what: str, error: KafkaError | KafkaException | str) -> Unavailable:
    if isinstance(error, KafkaException):
        error = error.args[0] if error.args else str(error)
    detail = error.str() if isinstance(error, KafkaError) else error
    return Unavailable(f"{what}: {detail}")


class KafkaTopics:
    """Creates topics the first time this process uses them, and waits until every partition
    has a leader, so that the first append or subscription does not race the creation."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        partitions: int,
        replication_factor: int,
        declared: Iterable[str],
    ) -> None:
        self._config = config
        self._partitions = partitions
        self._replication_factor = replication_factor
        self._declared = tuple(declared)
        self._ready: set[str] = set()
        self._lock = threading.Lock()
        self._admin_client: AdminClient | None = None

    def admin(self) -> AdminClient:
        """The log's admin client, made on first use (it connects in the background)."""
        with self._lock:
            if self._admin_client is None:
                config: dict[str, Any] = {**self._config, "error_cb": _ErrorReporter("admin")}
                self._admin_client = AdminClient(config)
            return self._admin_client

    def missing(self, topics: Iterable[str]) -> list[str]:
        """The topics among `topics` (and the declared ones) not known to exist yet."""
        wanted = dict.fromkeys((*self._declared, *topics))
        with self._lock:
            return [topic for topic in wanted if topic not in self._ready]

    def ensure(self, topics: Iterable[str], timeout: float) -> None:
        """Create whichever of `topics` do not exist; blocks up to `timeout` seconds, then
        raises Unavailable."""
        missing = self.missing(topics)
        if not missing:
            return
        deadline = time.monotonic() + timeout
        admin = self.admin()
        futures = admin.create_topics(
            [NewTopic(t, self._partitions, self._replication_factor) for t in missing],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        try:
            for future in futures.values():
                try:
                    future.result(timeout=max(0.0, deadline - time.monotonic()))
                except KafkaException as error:
                    if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise
            for topic in missing:
                self._await_leaders(admin, topic, deadline)
        except KafkaException as error:
            raise _unavailable("cannot create the message log topics", error) from error
        except concurrent.futures.TimeoutError as error:
            raise Unavailable(
                f"the Kafka cluster did not confirm the topics within {timeout:g}s"
            ) from error
        finally:
            admin.poll(0)  # serve the admin client's log lines
        with self._lock:
            self._ready.update(missing)

    def _await_leaders(self, admin: AdminClient, topic: str, deadline: float) -> None:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise concurrent.futures.TimeoutError
            found = admin.list_topics(topic, timeout=remaining).topics.get(topic)
            if (
                found is not None
                and found.error is None
                and found.partitions
                and all(p.leader >= 0 for p in found.partitions.values())
            ):
                if len(found.partitions) != self._partitions:
                    _log.warning(
                        "topic exists with another partition count",
                        extra={
                            "topic": topic,
                            "partitions": len(found.partitions),
                            "configured": self._partitions,
                        },
                    )
                return
            time.sleep(min(0.02, remaining))


class _Delivery:
    """The delivery reports of one append: resolves `future` on its event loop once every
    record is acknowledged, or at the first record that failed."""

    __slots__ = ("_lock", "_loop", "_remaining", "_settled", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.future: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        self._remaining = count
        self._settled = False
        self._lock = threading.Lock()

    def report(self, error: KafkaError | None, _message: Message) -> None:
        """librdkafka's delivery callback (on the producer's poll thread)."""
        if error is None:
            with self._lock:
                self._remaining -= 1
                if self._remaining > 0:
                    return
            self.settle(None)
        else:
            self.settle(_unavailable("the message log did not acknowledge a record", error))

    def abandon(self) -> None:
        """Ignore the reports still to come: the append failed before producing every record."""
        with self._lock:
            self._settled = True

    def settle(self, failure: Unavailable | None) -> None:
        with self._lock:
            if self._settled:
                return
            self._settled = True
        # RuntimeError: the loop is closed, nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_resolve, self.future, failure)


def _resolve(future: asyncio.Future[None], failure: Unavailable | None) -> None:
    if future.done():  # the append timed out or was cancelled
        return
    if failure is None:
        future.set_result(None)
    else:
        future.set_exception(failure)


class _ProducerClient:
    """One librdkafka producer and the thread serving its delivery reports."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.failure: KafkaError | None = None
        self._errors = _ErrorReporter("producer")
        self.producer = Producer({**config, "error_cb": self._on_error})
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, name="chatplane-kafka-producer", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(_SLICE)

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            # An idempotent producer that lost its sequence state cannot go on; appends
            # replace it with a new one.
            self.failure = error
            _log.error("kafka producer failed", extra={"error": error.str()})
        else:
            self._errors(error)

    def shut_down(self, timeout: float) -> None:
        """Deliver what is queued within `timeout` seconds, fail the rest, release (blocking)."""
        self._stop.set()
        self._thread.join()
        if self.producer.flush(timeout) > 0:
            # Undelivered records get a _PURGE_QUEUE/_PURGE_INFLIGHT report: their appends fail.
            self.producer.purge()
            self.producer.flush(0)
        self.producer.close()


class _KafkaProducer(MessageLogProducer):
    """Appends by producing every record, then awaiting their delivery reports."""

    def __init__(self, config: dict[str, Any], topics: KafkaTopics, close_timeout: float) -> None:
        self._config = config
        self._topics = topics
        self._close_timeout = close_timeout
        # Made now, so that the producer id is acquired before the first append needs it.
        self._client = _ProducerClient(config)
        self._closed = False

    async def append(self, records: Sequence[LogRecord], timeout: float) -> None:
        if self._closed:
            raise Unavailable("the message log producer is closed")
        if not records:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        missing = self._topics.missing(record.topic for record in records)
        if missing:
            await asyncio.to_thread(self._topics.ensure, missing, timeout)
            if self._closed:
                raise Unavailable("the message log producer is closed")
        client = self._usable_client()
        delivery = _Delivery(loop, len(records))
        try:
            for record in records:
                client.producer.produce(
                    record.topic,
                    record.value,
                    record.key,
                    on_delivery=delivery.report,
                    headers=list(record.headers) or None,
                )
        except BufferError as error:
            delivery.abandon()
            raise Unavailable("the message log producer's queue is full") from error
        except KafkaException as error:
            delivery.abandon()
            if error.args[0].fatal():
                client.failure = error.args[0]
            raise _unavailable("the message log refused a record", error) from error
        try:
            await asyncio.wait_for(delivery.future, max(0.0, deadline - loop.time()))
        except TimeoutError as error:
            raise Unavailable(f"the message log did not acknowledge within {timeout:g}s") from error

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self._client.shut_down, self._close_timeout)

    def _usable_client(self) -> _ProducerClient:
        if self._client.failure is not None:
            failed, self._client = self._client, _ProducerClient(self._config)
            _log.warning("replacing the kafka producer after a fatal error")
            threading.Thread(
                target=failed.shut_down, args=(0.0,), name="chatplane-kafka-retire", daemon=True
            ).start()
        return self._client


def _consumed(message: Message) -> ConsumedRecord:
    headers = message.headers()
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("a consumed record without a position")
    return ConsumedRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        key=message.key() or b"",
        value=message.value() or b"",
        headers=tuple(
            (name, _header_bytes(value))
            for name, value in (headers.items() if isinstance(headers, dict) else headers or ())
        ),
        timestamp_ms=message.timestamp()[1],
    )


def _header_bytes(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else value


class _KafkaConsumer(MessageLogConsumer):
    """A group member whose librdkafka calls all run on its one worker thread.

    Rebalance callbacks run inside ``consume``, i.e. during poll_batch, as in the Java
    client. The state they change (assignment, what has been fetched) is therefore touched
    only on the worker thread, except `_carry`, which has its own lock.
    """

    def __init__(
        self,
        config: dict[str, Any],
        topics: KafkaTopics,
        group: str,
        topic_names: Sequence[str],
        *,
        join_timeout: float,
        request_timeout: float,
    ) -> None:
        self._errors = _ErrorReporter(f"consumer {group}")
        self._failure: KafkaError | None = None
        self._consumer = Consumer({**config, "error_cb": self._on_error})
        # A second handle of the same group that never subscribes (so never joins): lag()
        # reads offsets through it without queueing behind this member's fetches.
        self._offsets = Consumer({**config, "error_cb": _ErrorReporter(f"offsets {group}")})
        self._offsets_lock = threading.Lock()
        self._topics = topics
        self._group = group
        self._topic_names = list(dict.fromkeys(topic_names))
        self._join_timeout = join_timeout
        self._request_timeout = request_timeout
        self._created = time.monotonic()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"chatplane-kafka-consumer-{group}"
        )
        self._subscribed = False
        self._joined = False
        self._assigned: set[_TopicPartitionKey] = set()
        # Assigned partitions that have reported reaching their end since they were assigned.
        self._at_end: set[_TopicPartitionKey] = set()
        # Offsets to commit again: refused while the group was changing (see _GROUP_CHANGED).
        self._deferred: dict[_TopicPartitionKey, int] = {}
        # The batch being assembled by poll_batch, so that a revocation can take records out.
        self._assembling: list[ConsumedRecord] = []
        # Records of a cancelled poll, returned first by the next one.
        self._carry: list[ConsumedRecord] = []
        self._carry_lock = threading.Lock()
        self._polling: threading.Event | None = None
        self._closed = False

    async def poll_batch(self, max_records: int, max_wait: float) -> list[ConsumedRecord]:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        if self._polling is not None:
            raise RuntimeError("poll_batch is already running on this consumer")
        self._check_usable()
        deadline = time.monotonic() + max(0.0, max_wait)
        until_ready = max(deadline, self._created + self._join_timeout)
        stop = self._polling = threading.Event()
        work = self._executor.submit(self._fetch, max_records, deadline, until_ready, stop)
        try:
            return await asyncio.wrap_future(work)
        except asyncio.CancelledError:
            # The worker may have taken records from librdkafka already: keep them.
            stop.set()
            work.add_done_callback(self._carry_over)
            raise
        finally:
            self._polling = None

    async def commit(self, records: Sequence[ConsumedRecord]) -> None:
        self._check_usable()
        highest: dict[_TopicPartitionKey, int] = {}
        for record in records:
            place = (record.topic, record.partition)
            highest[place] = max(record.offset, highest.get(place, -1))
        if highest:
            next_offsets = {place: offset + 1 for place, offset in highest.items()}
            await asyncio.wrap_future(self._executor.submit(self._commit, next_offsets))

    async def lag(self) -> int:
        self._check_usable()
        return await asyncio.to_thread(self._lag)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._polling is not None:
            self._polling.set()
        try:
            # Queued after the poll or commit under way; leaves the group, so that the
            # partitions move to another member at once rather than after the session timeout.
            await asyncio.wrap_future(self._executor.submit(self._consumer.close))
        finally:
            self._executor.shutdown(wait=False)
            await asyncio.to_thread(self._close_offsets)

    def _close_offsets(self) -> None:
        with self._offsets_lock:  # after a lag() under way
            self._offsets.close()

    def _check_usable(self) -> None:
        if self._closed:
            raise Unavailable("the message log consumer is closed")
        if self._failure is not None:
            raise _unavailable("the message log consumer failed", self._failure)

    def _carry_over(self, work: concurrent.futures.Future[list[ConsumedRecord]]) -> None:
        if work.cancelled() or work.exception() is not None:
            return
        with self._carry_lock:
            self._carry[:0] = work.result()

    # Everything below runs on the worker thread.

    def _fetch(
        self, max_records: int, deadline: float, until_ready: float, stop: threading.Event
    ) -> list[ConsumedRecord]:
        with self._carry_lock:
            batch, self._carry = self._carry[:max_records], self._carry[max_records:]
        if not self._subscribed and not self._subscribe(until_ready, stop):
            return batch
        self._assembling = batch
        try:
            while len(batch) < max_records and not stop.is_set():
                # Ready: a member of the group that has fetched what was there when it joined.
                ready = self._joined and self._assigned <= self._at_end
                remaining = (deadline if ready else until_ready) - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    messages = self._consumer.consume(
                        max_records - len(batch), min(remaining, _SLICE)
                    )
                except KafkaException as error:
                    self._on_error(error.args[0])
                    messages = []
                self._accept(messages, batch)
                if self._failure is not None:
                    raise _unavailable("the message log consumer failed", self._failure)
        finally:
            self._assembling = []
        self._commit_deferred()
        return batch

    def _subscribe(self, until: float, stop: threading.Event) -> bool:
        try:
            self._topics.ensure(self._topic_names, max(0.1, until - time.monotonic()))
        except Unavailable as error:
            _log.warning(
                "cannot subscribe yet", extra={"group": self._group, "error": error.message}
            )
            # The poll takes as long as it would have waited, rather than spinning.
            stop.wait(max(0.0, until - time.monotonic()))
            return False
        self._consumer.subscribe(
            self._topic_names,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        self._subscribed = True
        return True

    def _accept(self, messages: list[Message], batch: list[ConsumedRecord]) -> None:
        for message in messages:
            error = message.error()
            if error is None:
                batch.append(_consumed(message))
            elif error.code() == KafkaError._PARTITION_EOF:
                topic, partition = message.topic(), message.partition()
                if topic is not None and partition is not None:
                    self._at_end.add((topic, partition))
            else:
                self._on_error(error)

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._failure = error
            _log.error("kafka consumer failed", extra={"group": self._group, "error": error.str()})
        else:
            # Transient (a broker down, a leader moving): librdkafka retries by itself.
            self._errors(error)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._joined = True
        self._assigned.update((tp.topic, tp.partition) for tp in partitions)
        if partitions:
            _log.info(
                "partitions assigned",
                extra={"group": self._group, "partitions": _names(partitions)},
            )

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned -= gone
        self._at_end -= gone
        for place in gone:
            self._deferred.pop(place, None)
        # Their new owner starts at the group's commit and delivers these again.
        self._assembling[:] = [r for r in self._assembling if (r.topic, r.partition) not in gone]
        with self._carry_lock:
            self._carry = [r for r in self._carry if (r.topic, r.partition) not in gone]
        if partitions:
            _log.info(
                "partitions revoked",
                extra={"group": self._group, "partitions": _names(partitions)},
            )

    def _commit(self, next_offsets: dict[_TopicPartitionKey, int]) -> None:
        owned = {place: o for place, o in next_offsets.items() if place in self._assigned}
        if len(owned) < len(next_offsets):
            # Revoked since it was polled: the new owner reads from the group's last commit,
            # so these records are delivered (and deduplicated) again.
            _log.info(
                "commit skipped for partitions no longer assigned",
                extra={
                    "group": self._group,
                    "partitions": sorted(f"{t}/{p}" for t, p in next_offsets.keys() - owned),
                },
            )
        if not owned:
            return
        for place, offset in owned.items():
            if self._deferred.get(place, -1) <= offset:
                self._deferred.pop(place, None)
        self._commit_offsets(owned, raise_errors=True)

    def _commit_deferred(self) -> None:
        owned = {place: o for place, o in self._deferred.items() if place in self._assigned}
        self._deferred.clear()
        if owned:
            self._commit_offsets(owned, raise_errors=False)

    def _commit_offsets(
        self, offsets: dict[_TopicPartitionKey, int], *, raise_errors: bool
    ) -> None:
        try:
            committed = self._consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
            failed = [tp.error for tp in committed or () if tp.error is not None]
            if failed:
                raise KafkaException(failed[0])
        except KafkaException as exception:
            error: KafkaError = exception.args[0]
            if raise_errors and error.code() not in _GROUP_CHANGED:
                # The coordinator is unreachable or moving: the caller retries the commit.
                raise _unavailable("cannot commit to the message log", error) from exception
            for place, offset in offsets.items():
                self._deferred[place] = max(offset, self._deferred.get(place, -1))
            _log.info(
                "commit deferred to the next poll",
                extra={"group": self._group, "error": error.name()},
            )

    # Runs on a thread of its own with the `_offsets` handle: lag never waits for a poll. Not
    # the AdminClient: librdkafka's admin requests (ListOffsets, OffsetFetch) that time out
    # while the broker restarts can fail an assertion in rd_kafka_enq_once and abort the whole
    # process (reproduced with 2.13.2, 2.15.1 and 2.16.1; docs/kafka.md, "Lag").

    def _lag(self) -> int:
        deadline = time.monotonic() + self._request_timeout
        self._topics.ensure(self._topic_names, self._request_timeout)
        try:
            with self._offsets_lock:
                try:
                    return self._lag_until(deadline)
                finally:
                    self._offsets.poll(0)  # serve the handle's log lines and error reports
        except RuntimeError as error:  # the handle was closed before this call
            raise Unavailable("the message log consumer is closed") from error

    def _lag_until(self, deadline: float) -> int:
        try:
            while True:
                try:
                    return self._read_lag(deadline)
                except KafkaException as error:
                    # Metadata a moment old (a topic just created, a leader just moved).
                    if not retriable(error.args[0]) or time.monotonic() + 0.05 >= deadline:
                        raise
                time.sleep(0.05)
        except KafkaException as error:
            raise _unavailable("cannot read the message log's lag", error) from error

    def _read_lag(self, deadline: float) -> int:
        partitions: list[TopicPartition] = []
        for topic in self._topic_names:
            remaining = max(0.1, deadline - time.monotonic())
            found = self._offsets.list_topics(topic, timeout=remaining).topics[topic]
            if found.error is not None:
                raise KafkaException(found.error)
            partitions += [TopicPartition(topic, p) for p in sorted(found.partitions)]
        remaining = max(0.1, deadline - time.monotonic())
        committed = self._offsets.committed(partitions, timeout=remaining)
        total = 0
        for tp in committed:
            if tp.error is not None:
                raise KafkaException(tp.error)
            remaining = max(0.1, deadline - time.monotonic())
            low, high = self._offsets.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=remaining, cached=False
            )
            # No commit (negative) or one behind retention: the group starts at `low`.
            total += max(0, high - max(tp.offset, low))
        return total


def _names(partitions: Sequence[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}/{tp.partition}" for tp in partitions)

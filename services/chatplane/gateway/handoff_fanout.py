"""The handoff fan-out of one Gateway replica: tails the handoff topic (from its end, in no
consumer group, so every replica sees every event) and hands each event to the
WatchConversation streams open on this replica for its conversation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from google.protobuf.message import DecodeError

from chatplane.common.errors import Unavailable
from chatplane.common.topics import HANDOFF_SCHEMA_VERSION
from chatplane.crypto.keyring import Keyring
from chatplane.crypto.log_records import opened_handoff_event
from chatplane.internal.v1 import events_pb2
from chatplane.log.base import MessageLogConsumer

_log = logging.getLogger(__name__)

_POLL_RECORDS = 100
_POLL_WAIT_SECONDS = 0.5
_RETRY_SECONDS = 1.0
# Events a slow watcher may have queued; past that its stream is ended (it reconnects and
# reads the state again) rather than holding memory for it.
WATCH_QUEUE_LIMIT = 256


class HandoffFanout:
    """Delivers handoff events from the log to this replica's watchers."""

    def __init__(self, tail: MessageLogConsumer, keyring: Keyring | None = None) -> None:
        self._tail = tail
        # Operator replies arrive sealed (docs/security.md): opened for the watchers.
        self._keyring = keyring
        self._watchers: dict[str, set[asyncio.Queue[events_pb2.HandoffEvent | None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ended = False

    async def start(self) -> None:
        """Fix the tail's start (the end of the topic now), then deliver in the background."""
        try:
            await self._tail.poll_batch(1, 0.0)
        except Unavailable as error:
            # The log is down: the Gateway still serves chat; the tail keeps trying.
            _log.warning("handoff tail unavailable at start", extra={"error": error.message})
        self._task = asyncio.create_task(self._run(), name="handoff-fanout")

    async def end_watches(self) -> None:
        """End every watch stream, now and from now on (the replica drains: its watchers
        reconnect to another one instead of holding the drain up)."""
        self._ended = True
        for queues in self._watchers.values():
            for queue in queues:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)

    async def stop(self) -> None:
        """Stop delivering and close the tail; open watchers are told to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.end_watches()
        await self._tail.close()

    @contextlib.contextmanager
    def watch(
        self, conversation_id: str
    ) -> Iterator[asyncio.Queue[events_pb2.HandoffEvent | None]]:
        """A queue of the conversation's events from now on (None: the fan-out stopped or
        the watcher fell behind)."""
        queue: asyncio.Queue[events_pb2.HandoffEvent | None] = asyncio.Queue(WATCH_QUEUE_LIMIT + 1)
        if self._ended:
            queue.put_nowait(None)
        self._watchers.setdefault(conversation_id, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._watchers.get(conversation_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._watchers[conversation_id]

    def watcher_count(self) -> int:
        """Open watch streams on this replica."""
        return sum(len(queues) for queues in self._watchers.values())

    async def _run(self) -> None:
        while True:
            try:
                # poll_batch returns once it has max_records (or the wait is over): wait for
                # the first record, then take what else is there without waiting, so an
                # event is delivered as soon as the log has it.
                records = await self._tail.poll_batch(1, _POLL_WAIT_SECONDS)
                if records:
                    records += await self._tail.poll_batch(_POLL_RECORDS, 0.0)
            except Unavailable as error:
                _log.warning("handoff tail unavailable", extra={"error": error.message})
                await asyncio.sleep(_RETRY_SECONDS)
                continue
            for record in records:
                try:
                    event = events_pb2.HandoffEvent.FromString(record.value)
                except DecodeError:
                    _log.warning("undecodable handoff record", extra={"offset": record.offset})
                    continue
                if event.schema_version != HANDOFF_SCHEMA_VERSION:
                    _log.warning(
                        "handoff record of an unknown schema version",
                        extra={"version": event.schema_version},
                    )
                    continue
                if event.conversation_id in self._watchers:
                    try:
                        event = await opened_handoff_event(self._keyring, event)
                    except Unavailable as error:
                        _log.warning("handoff reply not opened", extra={"error": error.message})
                        continue
                self._deliver(event)

    def _deliver(self, event: events_pb2.HandoffEvent) -> None:
        for queue in tuple(self._watchers.get(event.conversation_id, ())):
            if queue.qsize() >= WATCH_QUEUE_LIMIT:
                # Full: end this watcher (None) rather than block the fan-out for everyone.
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)
                continue
            queue.put_nowait(event)

"""Appending audit events without slowing the calls that cause them: `AuditRecorder.record`
queues an event and returns at once; a background task appends the queue in batches (one
transaction per batch in the system of record). The queue is bounded: under a flood (say, of
bad credentials) events past `max_pending` are counted instead of kept, and the count is
appended as one `audit.dropped` record as soon as there is room, so the loss itself is on the
chain. docs/security.md, "Audit log", has the numbers."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from chatplane.audit.chain import AuditEvent
from chatplane.common.timestamps import utc_now

_log = logging.getLogger(__name__)

DROPPED_ACTION = "audit.dropped"
"""The action of the record that counts events the recorder could not keep."""


class AuditRejected(Exception):
    """The sink refused the batch itself (not a passing failure): retrying it is pointless."""


class AuditSink(Protocol):
    """Where batches of events go: the system of record (directly or through Persistence)."""

    async def append(self, events: Sequence[AuditEvent]) -> object:
        """Appends the events to the chain, in order, all or none (what it returns, such as
        the chain's new head, is not used)."""


class AuditRecorder:
    """A bounded queue of events in front of an `AuditSink`, appended in batches of at most
    `max_batch` every `flush_seconds` (sooner when a batch is full). A failed append is
    retried (with the same events, in order) after `retry_seconds`."""

    def __init__(
        self,
        sink: AuditSink,
        *,
        max_batch: int = 500,
        flush_seconds: float = 0.2,
        max_pending: int = 10_000,
        retry_seconds: float = 1.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if max_batch < 1 or max_pending < max_batch:
            raise ValueError("need 1 <= max_batch <= max_pending")
        self._sink = sink
        self._max_batch = max_batch
        self._flush_seconds = flush_seconds
        self._max_pending = max_pending
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._pending: collections.deque[AuditEvent] = collections.deque()
        self._dropped = 0
        # Set when something is queued (wakes the idle appender), and when a batch is full
        # (ends the wait for more events early).
        self._has_work = asyncio.Event()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.appended = 0

    @property
    def dropped(self) -> int:
        """Events counted but not kept since the last `audit.dropped` record was queued."""
        return self._dropped

    def record(self, event: AuditEvent) -> None:
        """Queues `event` (its time taken now if it has none); never blocks or raises."""
        if event.event_time is None:
            event = dataclasses.replace(event, event_time=self._clock())
        if len(self._pending) >= self._max_pending:
            self._dropped += 1
            return
        self._pending.append(event)
        self._idle.clear()
        self._has_work.set()
        if len(self._pending) >= self._max_batch:
            self._wake.set()

    def start(self) -> None:
        """Starts the background appender (on the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-recorder")

    async def flush(self, timeout: float = 5.0) -> bool:
        """Waits until everything queued so far is appended; False on timeout."""
        self._wake.set()
        self._has_work.set()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout: float = 5.0) -> None:
        """Appends what is queued (within `timeout`), then stops; what is left is logged."""
        self._stopping = True
        if self._task is None:
            return
        await self.flush(timeout)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._pending or self._dropped:
            _log.error(
                "audit events not appended at stop",
                extra={"pending": len(self._pending), "dropped": self._dropped},
            )

    def _dropped_event(self, count: int) -> AuditEvent:
        return AuditEvent(
            actor="chatplane",
            tenant_id="",
            action=DROPPED_ACTION,
            object="audit",
            outcome="failure",
            detail=(
                f"{count} event(s) not recorded: the audit queue was full,"
                " or the store refused them"
            ),
            event_time=self._clock(),
        )

    async def _run(self) -> None:
        while True:
            if not self._pending and not self._dropped:
                self._idle.set()
                self._has_work.clear()
                await self._has_work.wait()
            if not self._stopping and len(self._pending) < self._max_batch:
                # Gather a batch: whatever arrives within the flush interval goes with it.
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._flush_seconds):
                        await self._wake.wait()
            batch = [self._pending[i] for i in range(min(self._max_batch, len(self._pending)))]
            kept = len(batch)
            dropped = self._dropped if kept < self._max_batch else 0
            if dropped:
                batch.append(self._dropped_event(dropped))
            if not batch:
                continue
            try:
                await self._sink.append(batch)
            except AuditRejected as error:
                # Whatever in the batch was refused must not block the queue: append the
                # events one by one; those refused alone are counted as dropped (and go into
                # the next audit.dropped record, with the count this batch carried).
                _log.error("audit batch refused", extra={"error": repr(error)})
                refused = await self._append_each(batch[:kept])
                for _ in range(kept):
                    self._pending.popleft()
                self._dropped += refused
                self.appended += kept - refused
                continue
            except Exception as error:
                _log.warning(
                    "audit append failed; retrying",
                    extra={"events": len(batch), "error": repr(error)},
                )
                await asyncio.sleep(self._retry_seconds)
                continue
            for _ in range(kept):
                self._pending.popleft()
            # Drops counted while the append ran stay for the next batch.
            self._dropped -= dropped
            self.appended += len(batch)

    async def _append_each(self, batch: Sequence[AuditEvent]) -> int:
        """Appends the events one at a time; how many were refused."""
        refused = 0
        for event in batch:
            try:
                await self._sink.append([event])
            except Exception:  # refused, or a passing failure: the event is lost, and counted
                refused += 1
        return refused

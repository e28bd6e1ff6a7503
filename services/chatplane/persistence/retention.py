"""The retention sweep (docs/privacy.md "Retention"): every interval, for each tenant with a
retention period, deletes the conversations without activity for longer than the period
from the system of record, the memory index and the embedded message log. The clock is
injected, so tests move time instead of waiting."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, Protocol

from chatplane.common import errors
from chatplane.common.timestamps import utc_now
from chatplane.log.record_erasure import LogRecordEraser
from chatplane.persistence.store.base import Clock
from chatplane.persistence.store.erasure import ExpiredConversation, Retention

_log = logging.getLogger(__name__)

BATCH: Final = 200
"""Conversations deleted per store transaction."""


class ConversationForgetter(Protocol):
    """The memory index as the sweep sees it (MemoryService.Forget)."""

    async def forget_conversation(self, tenant_id: str, user_id: str, conversation_id: str) -> int:
        """Forgets the conversation's turns; how many there were."""
        ...


@dataclass(slots=True)
class SweepCounts:
    """What one sweep removed."""

    conversations: int = 0
    memory_turns: int = 0
    log_records: int = 0


class RetentionSweeper:
    """Runs `sweep` now (tests) or every `interval` seconds (`start`/`stop`)."""

    def __init__(
        self,
        retention: Retention,
        memory: ConversationForgetter,
        log: LogRecordEraser,
        *,
        interval: float,
        clock: Clock = utc_now,
    ) -> None:
        self._retention = retention
        self._memory = memory
        self._log = log
        self._interval = interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def sweep(self) -> SweepCounts:
        """One pass: first what a pass cut short left pending, then every tenant with a
        retention period."""
        counts = SweepCounts()
        while pending := await self._retention.pending(BATCH):
            await self._forget(pending, counts)
            if len(pending) < BATCH:
                break
        for policy in await self._retention.policies():
            before = self._clock() - timedelta(days=policy.days)
            while True:
                expired = await self._retention.expire(policy.tenant_id, before, BATCH)
                counts.conversations += len(expired)
                await self._forget(expired, counts)
                if len(expired) < BATCH:
                    break
        if counts.conversations:
            _log.info("retention sweep", extra=dataclasses.asdict(counts))
        return counts

    async def _forget(self, expired: Sequence[ExpiredConversation], counts: SweepCounts) -> None:
        """The memory turns and log records of conversations deleted from the rows."""
        if not expired:
            return
        for conversation in expired:
            counts.memory_turns += await self._memory.forget_conversation(
                conversation.tenant_id, conversation.user_id, conversation.conversation_id
            )
        ids = [conversation.conversation_id for conversation in expired]
        counts.log_records += (await self._log.erase_conversations(ids)).get("log_records", 0)
        await self._retention.finish_pending(ids)

    def start(self) -> None:
        """Sweeps every interval in the background until `stop`."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="retention-sweep")

    async def stop(self) -> None:
        """Stops the background sweeps (a sweep under way is cancelled; it resumes next time)."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.sweep()
            except errors.Unavailable as error:
                _log.warning("retention sweep failed; next time", extra={"error": error.message})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)

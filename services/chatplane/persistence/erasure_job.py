"""The erasure of a user (docs/privacy.md "Erasure"): a job of ordered, idempotent steps whose
progress is kept in the system of record, so that a job cut short (a crash, a store that was
down) is resumed where it stopped, at the next start of Persistence or on a repeated call.

Steps, in order:
1. data_key: destroy the user's data key (crypto-shredding: every encrypted copy of their
   text, in Kafka segments and backups too, becomes unreadable) — first, so that whatever
   a later step cannot reach is unreadable already;
2. system_of_record: delete the user's rows (one transaction);
3. memory_index: delete the user's turns from the memory index (MemoryService);
4. message_log: delete the records of the user's conversations from the embedded log, or
   write tombstones on the compacted Kafka topics.
Finishing the job appends its one audit record in the same transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Final, Protocol

from chatplane.common import errors
from chatplane.log.record_erasure import LogRecordEraser
from chatplane.persistence.store.erasure import ErasureJob, Erasures
from chatplane.persistence.store.key_records import AuditActor

_log = logging.getLogger(__name__)

DATA_KEY: Final = "data_key"
SYSTEM_OF_RECORD: Final = "system_of_record"
MEMORY_INDEX: Final = "memory_index"
MESSAGE_LOG: Final = "message_log"
STEPS: Final = (DATA_KEY, SYSTEM_OF_RECORD, MEMORY_INDEX, MESSAGE_LOG)


class UserKeyShredder(Protocol):
    """Crypto-shredding: destroys a user's data key (the keyring of encryption at rest)."""

    async def destroy_user_key(self, tenant_id: str, user_id: str) -> bool:
        """Destroys the user's data key; False when the user had none. Idempotent."""
        ...


class MemoryEraser(Protocol):
    """The memory index as the erasure sees it (MemoryService.EraseUserMemory)."""

    async def erase_user_memory(
        self, tenant_id: str, user_id: str, conversation_ids: Sequence[str]
    ) -> int:
        """Deletes every turn of the user; how many there were. Idempotent."""
        ...


class ErasureJobs:
    """Runs and resumes erasure jobs; one run of a job at a time in this process."""

    def __init__(
        self,
        ledger: Erasures,
        *,
        memory: MemoryEraser,
        log: LogRecordEraser,
        shredder: UserKeyShredder | None,
    ) -> None:
        self._ledger = ledger
        self._memory = memory
        self._log = log
        # The keyring of encryption at rest (chatplane.crypto); None only in tests without it:
        # the data_key step then records that no key was destroyed ("keyring": 0).
        self._shredder = shredder
        self._running: dict[str, asyncio.Task[ErasureJob]] = {}

    async def erase(self, tenant_id: str, user_id: str, actor: AuditActor) -> ErasureJob:
        """Runs the user's erasure (resuming their unfinished one) to its end; the job."""
        if not tenant_id or not user_id:
            raise errors.InvalidArgument("owner", "tenant_id and user_id are required")
        job = await self._ledger.start(tenant_id, user_id, STEPS, actor)
        return await self._run(job)

    async def resume_unfinished(self) -> list[ErasureJob]:
        """Runs every unfinished job to its end (at start); the jobs finished."""
        finished = []
        for job in await self._ledger.unfinished():
            _log.info("resuming an erasure", extra={"job_id": job.job_id})
            finished.append(await self._run(job))
        return finished

    async def resume_until_done(self, retry_seconds: float = 2.0, max_retry: float = 60.0) -> None:
        """resume_unfinished, retried with backoff while a store is unavailable (a service
        this one needs may still be starting)."""
        delay = retry_seconds
        while True:
            try:
                await self.resume_unfinished()
                return
            except errors.Unavailable as error:
                _log.warning("erasure resume failed; retrying", extra={"error": error.message})
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_retry)

    async def _run(self, job: ErasureJob) -> ErasureJob:
        task = self._running.get(job.job_id)
        if task is None:
            task = asyncio.create_task(self._steps(job), name=f"erasure-{job.job_id}")
            self._running[job.job_id] = task
            task.add_done_callback(lambda _: self._running.pop(job.job_id, None))
        # A caller that gives up does not stop the job: it ends, or resumes later.
        return await asyncio.shield(task)

    async def _steps(self, job: ErasureJob) -> ErasureJob:
        for position, step in enumerate(job.steps):
            if step.done:
                continue
            removed = await self._step(job, step.name)
            job = await self._ledger.finish_step(job.job_id, position, removed)
            _log.info(
                "erasure step done", extra={"job_id": job.job_id, "step": step.name, **removed}
            )
        return await self._ledger.finish(job.job_id)

    async def _step(self, job: ErasureJob, name: str) -> dict[str, int]:
        if name == DATA_KEY:
            if self._shredder is None:
                return {"keyring": 0}
            destroyed = await self._shredder.destroy_user_key(job.tenant_id, job.user_id)
            return {"data_keys": int(destroyed)}
        if name == SYSTEM_OF_RECORD:
            return await self._ledger.erase_user_rows(job.tenant_id, job.user_id)
        if name == MEMORY_INDEX:
            turns = await self._memory.erase_user_memory(
                job.tenant_id, job.user_id, job.conversation_ids
            )
            return {"turns": turns}
        if name == MESSAGE_LOG:
            return await self._log.erase_conversations(sorted(job.conversation_ids))
        raise errors.FailedPrecondition(f"unknown erasure step {name!r}")

"""ErasureJobs over a real SQLite store: the data key goes first, a step that fails leaves the
job unfinished with the steps before it recorded, and the next call (or the resume at start)
finishes it without running a finished step again."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import pytest

from chatplane.common import errors
from chatplane.persistence.erasure_job import STEPS, ErasureJobs
from chatplane.persistence.store.key_records import AuditActor
from chatplane.persistence.store.postgres import PostgresConversationStore

TENANT, USER = "t", "u"


class Recorder:
    """The data key, the memory and the log as the job sees them, writing down the calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.memory_down = False

    async def destroy_user_key(self, tenant_id: str, user_id: str) -> bool:
        self.calls.append("data_key")
        return True

    async def erase_user_memory(
        self, tenant_id: str, user_id: str, conversation_ids: Sequence[str]
    ) -> int:
        if self.memory_down:
            raise errors.Unavailable("memory is down")
        self.calls.append("memory_index")
        return 3

    async def erase_conversations(self, conversation_ids: Collection[str]) -> dict[str, int]:
        self.calls.append("message_log")
        return {"log_records": 5}


async def test_a_failed_step_is_resumed_without_repeating_the_ones_done(
    postgres_database: str,
) -> None:
    store = await PostgresConversationStore.open(postgres_database, pool_max_size=4)
    parts = Recorder()
    jobs = ErasureJobs(store.erasures, memory=parts, log=parts, shredder=parts)
    try:
        parts.memory_down = True
        with pytest.raises(errors.Unavailable):
            await jobs.erase(TENANT, USER, AuditActor("user:admin"))
        (unfinished,) = await store.erasures.unfinished()
        assert [step.done for step in unfinished.steps] == [True, True, False, False]
        assert parts.calls == ["data_key"]

        parts.memory_down = False
        (finished,) = await jobs.resume_unfinished()
        assert finished.job_id == unfinished.job_id and finished.finished
        assert parts.calls == ["data_key", "memory_index", "message_log"]
        removed = {step.name: dict(step.removed) for step in finished.steps}
        assert list(removed) == list(STEPS)
        assert removed["data_key"] == {"data_keys": 1}
        assert removed["memory_index"] == {"turns": 3}
        assert removed["message_log"] == {"log_records": 5}
        head = await store.audit.head()
        assert [r.event.action for r in await store.audit.records(0, head.seq)] == ["user.erase"]
    finally:
        await store.close()


async def test_without_a_keyring_the_data_key_step_says_so(postgres_database: str) -> None:
    store = await PostgresConversationStore.open(postgres_database, pool_max_size=4)
    parts = Recorder()
    try:
        job = await ErasureJobs(store.erasures, memory=parts, log=parts, shredder=None).erase(
            TENANT, USER, AuditActor()
        )
        assert dict(job.steps[0].removed) == {"keyring": 0}
        with pytest.raises(errors.InvalidArgument):
            await ErasureJobs(store.erasures, memory=parts, log=parts, shredder=None).erase(
                TENANT, "", AuditActor()
            )
    finally:
        await store.close()

"""Fault injection for the erasure tests, from outside the services: watch the system of
record through the store's public API (so it works on every store engine) until an erasure
job has finished a given step, then SIGKILL Persistence, as a crash between two steps would.
Nothing in the services knows about it."""

from __future__ import annotations

from chatplane.common.settings import Settings
from chatplane.launcher import ServiceProcess
from chatplane.persistence.store.erasure import ErasureJob
from chatplane.persistence.store.factory import open_store
from tests.integration.stack_client import poll


async def kill_after_erasure_step(
    persistence: ServiceProcess,
    settings: Settings,
    *,
    tenant_id: str,
    user_id: str,
    step: str,
    timeout: float = 30.0,
) -> ErasureJob:
    """SIGKILLs `persistence` once the user's unfinished erasure has stored the end of `step`
    (in the store `settings` name, the one Persistence uses); the job as it was seen then.
    The kill lands after the step's record, so the caller must keep the job from passing the
    next step meanwhile (e.g. by stopping the service that step calls)."""
    store = await open_store(settings)
    try:

        async def reached() -> ErasureJob | None:
            for job in await store.erasures.unfinished():
                if (job.tenant_id, job.user_id) == (tenant_id, user_id) and any(
                    s.name == step and s.done for s in job.steps
                ):
                    return job
            return None

        job: ErasureJob = await poll(reached, timeout=timeout, interval=0.02)
    finally:
        await store.close()
    persistence.kill()
    await persistence.process.wait()
    return job

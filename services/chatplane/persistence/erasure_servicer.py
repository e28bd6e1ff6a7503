"""PersistenceService's erasure and retention RPCs (docs/privacy.md): EraseUser runs or
resumes a user's erasure job and answers its receipt; Set/GetRetention keep a tenant's
retention period."""

from __future__ import annotations

from chatplane.common import errors
from chatplane.common.timestamps import optional_timestamp_of
from chatplane.persistence.erasure_job import ErasureJobs
from chatplane.persistence.identity_servicer import audit_actor
from chatplane.persistence.protos import owner_of, require
from chatplane.persistence.servicer import Context
from chatplane.persistence.store.base import ConversationStore
from chatplane.persistence.store.erasure import ErasureJob, RetentionPolicy
from chatplane.v1 import erasure_pb2, persistence_pb2

_MAX_TENANT_CHARS = 256


def erasure_receipt(job: ErasureJob) -> erasure_pb2.ErasureReceipt:
    """A job as the contracts show it."""
    return erasure_pb2.ErasureReceipt(
        job_id=job.job_id,
        tenant_id=job.tenant_id,
        user_id=job.user_id,
        create_time=optional_timestamp_of(job.create_time),
        finish_time=optional_timestamp_of(job.finish_time),
        steps=[
            erasure_pb2.ErasureStepReceipt(
                step=step.name,
                removed=dict(step.removed),
                finish_time=optional_timestamp_of(step.finish_time),
            )
            for step in job.steps
        ],
    )


def retention_policy(policy: RetentionPolicy) -> erasure_pb2.RetentionPolicy:
    """A retention period as the contracts show it."""
    return erasure_pb2.RetentionPolicy(
        tenant_id=policy.tenant_id,
        days=policy.days,
        update_time=optional_timestamp_of(policy.update_time),
    )


def _tenant(tenant_id: str) -> str:
    require(tenant_id, "tenant_id")
    if len(tenant_id) > _MAX_TENANT_CHARS:
        raise errors.InvalidArgument("tenant_id", f"must be at most {_MAX_TENANT_CHARS} characters")
    return tenant_id


class ErasureRpcs:
    """EraseUser and Set/GetRetention, mixed into the servicer class, which sets `_erasure`
    and `_store`."""

    _erasure: ErasureJobs
    _store: ConversationStore

    async def EraseUser(
        self, request: persistence_pb2.PersistenceServiceEraseUserRequest, context: Context
    ) -> persistence_pb2.PersistenceServiceEraseUserResponse:
        owner = owner_of(request.owner)
        job = await self._erasure.erase(owner.tenant_id, owner.user_id, audit_actor(request.actor))
        return persistence_pb2.PersistenceServiceEraseUserResponse(receipt=erasure_receipt(job))

    async def SetRetention(
        self, request: persistence_pb2.PersistenceServiceSetRetentionRequest, context: Context
    ) -> persistence_pb2.PersistenceServiceSetRetentionResponse:
        policy = await self._store.set_retention(_tenant(request.tenant_id), request.days)
        return persistence_pb2.PersistenceServiceSetRetentionResponse(
            policy=retention_policy(policy)
        )

    async def GetRetention(
        self, request: persistence_pb2.PersistenceServiceGetRetentionRequest, context: Context
    ) -> persistence_pb2.PersistenceServiceGetRetentionResponse:
        policy = await self._store.get_retention(_tenant(request.tenant_id))
        return persistence_pb2.PersistenceServiceGetRetentionResponse(
            policy=retention_policy(policy)
        )

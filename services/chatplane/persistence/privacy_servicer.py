"""PrivacyService (docs/privacy.md): ExportUserRecords streams everything stored of a user
(user_records.py); EraseUser runs or resumes a user's erasure job and answers its receipt;
Set/GetRetention keep a tenant's retention period."""

from __future__ import annotations

from collections.abc import AsyncIterator

from chatplane.common.timestamps import optional_timestamp_of
from chatplane.internal.v1 import privacy_pb2, privacy_pb2_grpc
from chatplane.persistence.erasure_job import ErasureJobs
from chatplane.persistence.identity_servicer import audit_actor
from chatplane.persistence.protos import Context, owner, page_size, tenant
from chatplane.persistence.store.base import ConversationStore
from chatplane.persistence.store.erasure import ErasureJob, RetentionPolicy
from chatplane.persistence.user_records import UserRecords
from chatplane.v1 import erasure_pb2

EXPORT_PAGE = (200, 1000)
"""Records per store read of an export: the default and the most."""


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


class PrivacyServicer(privacy_pb2_grpc.PrivacyServiceServicer):
    """PrivacyService over the store and the erasure jobs."""

    def __init__(self, store: ConversationStore, erasure: ErasureJobs) -> None:
        self._store = store
        self._erasure = erasure
        self._records = UserRecords(store)

    async def ExportUserRecords(
        self, request: privacy_pb2.ExportUserRecordsRequest, context: Context
    ) -> AsyncIterator[privacy_pb2.ExportUserRecordsResponse]:
        user = owner(request.owner)
        limit = page_size(request.page_size, "page_size", EXPORT_PAGE)
        async for record in self._records.records(user, limit):
            yield record

    async def EraseUser(
        self, request: privacy_pb2.EraseUserRequest, context: Context
    ) -> privacy_pb2.EraseUserResponse:
        user = owner(request.owner)
        job = await self._erasure.erase(user.tenant_id, user.user_id, audit_actor(request.actor))
        return privacy_pb2.EraseUserResponse(receipt=erasure_receipt(job))

    async def SetRetention(
        self, request: privacy_pb2.SetRetentionRequest, context: Context
    ) -> privacy_pb2.SetRetentionResponse:
        policy = await self._store.retention.set(tenant(request.tenant_id), request.days)
        return privacy_pb2.SetRetentionResponse(policy=retention_policy(policy))

    async def GetRetention(
        self, request: privacy_pb2.GetRetentionRequest, context: Context
    ) -> privacy_pb2.GetRetentionResponse:
        policy = await self._store.retention.get(tenant(request.tenant_id))
        return privacy_pb2.GetRetentionResponse(policy=retention_policy(policy))

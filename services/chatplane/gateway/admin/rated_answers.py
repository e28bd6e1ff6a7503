"""AdminService.ListRatedAnswers (docs/datasets.md): a tenant admin's page of the tenant's
rated answers for feedback datasets, through AnalyticsService.ListRatedAnswers."""

from __future__ import annotations

from chatplane import audit
from chatplane.common.context import Principal
from chatplane.common.status_mapping import caller_field_errors
from chatplane.internal.v1 import analytics_pb2
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_pb2

DATASET_EXPORT = "dataset.export"
"""The audit action of an admin's export (its first page; docs/datasets.md)."""


async def rated_answers_page(
    principal: Principal,
    request: admin_pb2.ListRatedAnswersRequest,
    persistence: PersistenceClient,
    timeout: float,
    source: str = "",
) -> admin_pb2.ListRatedAnswersResponse:
    """The page; the request's fields are checked by Persistence, whose INVALID_ARGUMENT is
    passed on as the caller's own field (FAILED_PRECONDITION: the tenant did not opt in)."""
    downstream = analytics_pb2.ListRatedAnswersRequest(
        tenant_id=principal.tenant_id,
        min_rating=request.min_rating,
        page_size=request.page_size,
        page_token=request.page_token,
    )
    if request.HasField("since"):
        downstream.since.CopyFrom(request.since)
    if request.HasField("until"):
        downstream.until.CopyFrom(request.until)
    with caller_field_errors(""):
        response = await persistence.analytics.ListRatedAnswers(downstream, timeout=timeout)
    if not request.page_token:
        # Conversations leave the system of record: who asked, for what slice.
        audit.record(
            DATASET_EXPORT,
            actor=audit.actor_of(principal),
            tenant_id=principal.tenant_id,
            object=f"tenant/{principal.tenant_id}/rated_answers",
            outcome=audit.SUCCESS,
            detail=f"since={downstream.since.ToJsonString()} min_rating={request.min_rating}",
            source=source,
        )
    return admin_pb2.ListRatedAnswersResponse(
        answers=response.answers, next_page_token=response.next_page_token
    )

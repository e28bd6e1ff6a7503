"""AnalyticsService: reads over answers and their feedback. ListRatedAnswers (docs/datasets.md)
pages rated answers with their branches for feedback datasets, translated between proto and
RatedAnswerExport; ReportVariants (docs/variants.md) is variant_report.py's."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from chatplane.common import errors
from chatplane.common.settings import Settings
from chatplane.common.timestamps import timestamp_of, to_micros
from chatplane.internal.v1 import analytics_pb2, analytics_pb2_grpc
from chatplane.persistence.protos import (
    Context,
    decode_token,
    encode_token,
    page_size,
    token_id,
    token_time,
)
from chatplane.persistence.rated_answer_export import ExportedAnswer, RatedAnswerExport
from chatplane.persistence.store.answer_metrics import RatedAnswerQuery
from chatplane.persistence.store.base import ConversationStore, Role
from chatplane.persistence.variant_report import report_variants
from chatplane.privacy.policy import RedactionPolicy
from chatplane.v1 import admin_resources_pb2, gateway_pb2, resources_pb2

RATED_ANSWERS_PAGE = (100, 500)
_MAX_TENANT_CHARS = 256
_ROLES = {Role.USER: resources_pb2.ROLE_USER, Role.ASSISTANT: resources_pb2.ROLE_ASSISTANT}


def _time(stamp: timestamp_pb2.Timestamp, field: str) -> datetime:
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as error:
        raise errors.InvalidArgument(field, "not a valid time") from error


def rated_answer_query(
    request: analytics_pb2.ListRatedAnswersRequest, tenants: tuple[str, ...]
) -> RatedAnswerQuery:
    """The store query of a request (InvalidArgument naming the field otherwise)."""
    if not request.HasField("since"):
        raise errors.InvalidArgument("since", "required")
    since = _time(request.since, "since")
    until = _time(request.until, "until") if request.HasField("until") else None
    if until is not None and until <= since:
        raise errors.InvalidArgument("until", "must be after since")
    if not 1 <= request.min_rating <= 5:
        raise errors.InvalidArgument("min_rating", "must be between 1 and 5")
    after = None
    if request.page_token:
        fields = decode_token(request.page_token, "page_token", "r")
        after = (token_time(fields, "t", "page_token"), token_id(fields, "id", "page_token"))
    return RatedAnswerQuery(
        tenants=tenants,
        since=since,
        until=until,
        min_rating=request.min_rating,
        limit=page_size(request.page_size, "page_size", RATED_ANSWERS_PAGE),
        after=after,
    )


def rated_answer(exported: ExportedAnswer) -> admin_resources_pb2.RatedAnswer:
    """One answer as the RPC returns it."""
    row = exported.answer
    answer = admin_resources_pb2.RatedAnswer(
        tenant_id=row.tenant_id,
        conversation_id=row.conversation_id,
        message_id=row.message_id,
        variant=row.variant,
        thumbs=gateway_pb2.RATING_THUMBS_UP if row.thumbs_up else gateway_pb2.RATING_THUMBS_DOWN,
        rating=row.rating,
        create_time=timestamp_of(row.create_time),
        model=row.model,
        messages=[
            admin_resources_pb2.DatasetMessage(role=_ROLES[m.role], text=m.text)
            for m in exported.branch
        ],
        redacted=exported.redacted,
    )
    if row.score is not None:
        answer.score = row.score
    return answer


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    """AnalyticsService over the store; `settings` name the tenants that opted in to datasets
    and the PII redaction policy."""

    def __init__(self, store: ConversationStore, settings: Settings) -> None:
        self._store = store
        self._export = RatedAnswerExport(
            store,
            frozenset(settings.dataset_export_tenants),
            RedactionPolicy.from_settings(settings),
        )

    async def ListRatedAnswers(
        self, request: analytics_pb2.ListRatedAnswersRequest, context: Context
    ) -> analytics_pb2.ListRatedAnswersResponse:
        if len(request.tenant_id) > _MAX_TENANT_CHARS:
            raise errors.InvalidArgument(
                "tenant_id", f"must be at most {_MAX_TENANT_CHARS} characters"
            )
        query = rated_answer_query(request, self._export.tenants(request.tenant_id))
        page = await self._export.page(query)
        token = ""
        if page.next_after is not None:
            moment, message_id = page.next_after
            token = encode_token({"k": "r", "t": to_micros(moment), "id": message_id})
        return analytics_pb2.ListRatedAnswersResponse(
            answers=[rated_answer(a) for a in page.answers], next_page_token=token
        )

    async def ReportVariants(
        self, request: analytics_pb2.ReportVariantsRequest, context: Context
    ) -> analytics_pb2.ReportVariantsResponse:
        return await report_variants(self._store, request)

"""AnalyticsService: reads over answers and their feedback. ListRatedAnswers (docs/datasets.md)
pages rated answers with their branches for feedback datasets, translated between proto and
RatedAnswerExport; ReportVariants (docs/variants.md) answers the store's per-variant
aggregation with its analysis (variant_significance.py)."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

from chatplane.common import errors
from chatplane.common.settings import Settings
from chatplane.common.timestamps import datetime_of, timestamp_of
from chatplane.internal.v1 import analytics_pb2, analytics_pb2_grpc
from chatplane.persistence.protos import (
    ROLES,
    Context,
    at_most,
    page_size,
    position_cursor,
    position_token,
)
from chatplane.persistence.rated_answer_export import ExportedAnswer, RatedAnswerExport
from chatplane.persistence.store.answer_metrics import RatedAnswerQuery, VariantStats
from chatplane.persistence.store.base import ConversationStore
from chatplane.persistence.variant_significance import DEFAULT_ALPHA, VariantAnalysis, compare
from chatplane.privacy.policy import RedactionPolicy
from chatplane.v1 import admin_resources_pb2, gateway_pb2

RATED_ANSWERS_PAGE = (100, 500)


def _time(stamp: timestamp_pb2.Timestamp, field: str) -> datetime:
    try:
        return datetime_of(stamp)
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
    after = position_cursor(request.page_token, "page_token", "r", lambda *position: position)
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
    return admin_resources_pb2.RatedAnswer(
        tenant_id=row.tenant_id,
        conversation_id=row.conversation_id,
        message_id=row.message_id,
        variant=row.variant,
        thumbs=gateway_pb2.RATING_THUMBS_UP if row.thumbs_up else gateway_pb2.RATING_THUMBS_DOWN,
        rating=row.rating,
        create_time=timestamp_of(row.create_time),
        model=row.model,
        messages=[
            admin_resources_pb2.DatasetMessage(role=ROLES[m.role], text=m.text)
            for m in exported.branch
        ],
        redacted=exported.redacted,
        score=row.score,  # None: unset
    )


def variant_report(stats: VariantStats, analysis: VariantAnalysis) -> analytics_pb2.VariantReport:
    """One variant's line of the report with its intervals, p-values and verdict; what is
    absent stays unset (nothing to average or to test)."""
    report = analytics_pb2.VariantReport(
        variant=stats.variant,
        answers=stats.answers,
        interrupted_answers=stats.interrupted_answers,
        feedback_count=stats.feedback_count,
        scored_count=stats.scored_count,
        thumbs_up_count=stats.thumbs_up_count,
        verdict=analysis.verdict,
    )
    rate, score = analysis.thumbs_up_rate, analysis.mean_score
    optional = {
        "mean_score": stats.mean_score,
        "thumbs_up_rate": stats.thumbs_up_rate,
        "mean_first_token_ms": stats.mean_first_token_ms,
        "mean_duration_ms": stats.mean_duration_ms,
        "mean_input_tokens": stats.mean_input_tokens,
        "mean_output_tokens": stats.mean_output_tokens,
        "thumbs_up_rate_low": None if rate is None else rate.low,
        "thumbs_up_rate_high": None if rate is None else rate.high,
        "mean_score_low": None if score is None else score.low,
        "mean_score_high": None if score is None else score.high,
        "score_stddev": analysis.score_stddev,
        "thumbs_up_p_value": analysis.thumbs_up_p_value,
        "mean_score_p_value": analysis.mean_score_p_value,
    }
    for field, value in optional.items():
        if value is not None:
            setattr(report, field, value)
    return report


async def report_variants(
    store: ConversationStore, request: analytics_pb2.ReportVariantsRequest
) -> analytics_pb2.ReportVariantsResponse:
    """Validates the request and asks the store."""
    at_most(request.tenant_id, "tenant_id")
    since = _time(request.since, "since") if request.HasField("since") else None
    alpha = request.alpha if request.HasField("alpha") else DEFAULT_ALPHA
    if not 0 < alpha < 0.5:
        raise errors.InvalidArgument("alpha", "must be greater than 0 and less than 0.5")
    at_most(request.control, "control")
    stats = await store.analytics.report_variants(request.tenant_id or None, since)
    if request.control and stats and request.control not in {s.variant for s in stats}:
        raise errors.InvalidArgument("control", "no answers of this variant in the report")
    comparison = compare(stats, control=request.control, alpha=alpha)
    return analytics_pb2.ReportVariantsResponse(
        variants=[variant_report(s, comparison.variants[s.variant]) for s in stats],
        control=comparison.control,
        alpha=alpha,
        comparisons=comparison.comparisons,
        recommended_variant=comparison.recommended_variant,
        recommendation=comparison.recommendation,
    )


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
        tenants = self._export.tenants(at_most(request.tenant_id, "tenant_id"))
        query = rated_answer_query(request, tenants)
        page = await self._export.page(query)
        return analytics_pb2.ListRatedAnswersResponse(
            answers=[rated_answer(a) for a in page.answers],
            next_page_token=position_token("r", page.next_after),
        )

    async def ReportVariants(
        self, request: analytics_pb2.ReportVariantsRequest, context: Context
    ) -> analytics_pb2.ReportVariantsResponse:
        return await report_variants(self._store, request)

"""AnalyticsService.ReportVariants: the store's per-variant aggregation as the RPC's
response (docs/variants.md)."""

from __future__ import annotations

from datetime import UTC

from chatplane.common import errors
from chatplane.internal.v1 import analytics_pb2
from chatplane.persistence.store.answer_metrics import VariantStats
from chatplane.persistence.store.base import ConversationStore
from chatplane.persistence.variant_significance import DEFAULT_ALPHA, VariantAnalysis, compare

_MAX_TENANT_CHARS = 256


def variant_report(stats: VariantStats) -> analytics_pb2.VariantReport:
    """One variant's line of the report; absent means stay unset (nothing to average)."""
    report = analytics_pb2.VariantReport(
        variant=stats.variant,
        answers=stats.answers,
        interrupted_answers=stats.interrupted_answers,
        feedback_count=stats.feedback_count,
        scored_count=stats.scored_count,
        thumbs_up_count=stats.thumbs_up_count,
    )
    means = {
        "mean_score": stats.mean_score,
        "thumbs_up_rate": stats.thumbs_up_rate,
        "mean_first_token_ms": stats.mean_first_token_ms,
        "mean_duration_ms": stats.mean_duration_ms,
        "mean_input_tokens": stats.mean_input_tokens,
        "mean_output_tokens": stats.mean_output_tokens,
    }
    for field, value in means.items():
        if value is not None:
            setattr(report, field, value)
    return report


def with_analysis(
    report: analytics_pb2.VariantReport, analysis: VariantAnalysis
) -> analytics_pb2.VariantReport:
    """The report line with its intervals, p-values and verdict (issue 8)."""
    if analysis.thumbs_up_rate is not None:
        report.thumbs_up_rate_low = analysis.thumbs_up_rate.low
        report.thumbs_up_rate_high = analysis.thumbs_up_rate.high
    if analysis.mean_score is not None:
        report.mean_score_low = analysis.mean_score.low
        report.mean_score_high = analysis.mean_score.high
    if analysis.score_stddev is not None:
        report.score_stddev = analysis.score_stddev
    if analysis.thumbs_up_p_value is not None:
        report.thumbs_up_p_value = analysis.thumbs_up_p_value
    if analysis.mean_score_p_value is not None:
        report.mean_score_p_value = analysis.mean_score_p_value
    report.verdict = analysis.verdict
    return report


async def report_variants(
    store: ConversationStore, request: analytics_pb2.ReportVariantsRequest
) -> analytics_pb2.ReportVariantsResponse:
    """Validates the request and asks the store."""
    if len(request.tenant_id) > _MAX_TENANT_CHARS:
        raise errors.InvalidArgument("tenant_id", f"must be at most {_MAX_TENANT_CHARS} characters")
    since = None
    if request.HasField("since"):
        try:
            since = request.since.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError) as error:
            raise errors.InvalidArgument("since", "not a valid time") from error
    alpha = request.alpha if request.HasField("alpha") else DEFAULT_ALPHA
    if not 0 < alpha < 0.5:
        raise errors.InvalidArgument("alpha", "must be greater than 0 and less than 0.5")
    if len(request.control) > _MAX_TENANT_CHARS:
        raise errors.InvalidArgument("control", f"must be at most {_MAX_TENANT_CHARS} characters")
    stats = await store.analytics.report_variants(request.tenant_id or None, since)
    if request.control and stats and request.control not in {s.variant for s in stats}:
        raise errors.InvalidArgument("control", "no answers of this variant in the report")
    comparison = compare(stats, control=request.control, alpha=alpha)
    return analytics_pb2.ReportVariantsResponse(
        variants=[with_analysis(variant_report(s), comparison.variants[s.variant]) for s in stats],
        control=comparison.control,
        alpha=alpha,
        comparisons=comparison.comparisons,
        recommended_variant=comparison.recommended_variant,
        recommendation=comparison.recommendation,
    )

"""PersistenceService.ReportVariants: the store's per-variant aggregation as the RPC's
response (docs/variants.md)."""

from __future__ import annotations

from datetime import UTC

from chatplane.common import errors
from chatplane.persistence.store.answer_metrics import VariantStats
from chatplane.persistence.store.base import ConversationStore
from chatplane.v1 import persistence_pb2

_MAX_TENANT_CHARS = 256


def variant_report(stats: VariantStats) -> persistence_pb2.VariantReport:
    """One variant's line of the report; absent means stay unset (nothing to average)."""
    report = persistence_pb2.VariantReport(
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


async def report_variants(
    store: ConversationStore, request: persistence_pb2.ReportVariantsRequest
) -> persistence_pb2.ReportVariantsResponse:
    """Validates the request and asks the store."""
    if len(request.tenant_id) > _MAX_TENANT_CHARS:
        raise errors.InvalidArgument("tenant_id", f"must be at most {_MAX_TENANT_CHARS} characters")
    since = None
    if request.HasField("since"):
        try:
            since = request.since.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError) as error:
            raise errors.InvalidArgument("since", "not a valid time") from error
    stats = await store.report_variants(request.tenant_id or None, since)
    return persistence_pb2.ReportVariantsResponse(variants=[variant_report(s) for s in stats])

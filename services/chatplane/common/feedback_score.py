"""The optional 1-5 score of feedback (docs/variants.md), checked the same way by the Gateway
and by Persistence."""

from __future__ import annotations

from chatplane.common import errors
from chatplane.v1 import gateway_pb2

MIN_SCORE = 1
MAX_SCORE = 5


def feedback_score(request: gateway_pb2.SubmitFeedbackRequest, field: str = "score") -> int | None:
    """The request's score, None when it has none; INVALID_ARGUMENT naming `field` when it is
    set outside 1-5 (0 included: proto3 `optional` tells unset from 0)."""
    if not request.HasField("score"):
        return None
    if not MIN_SCORE <= request.score <= MAX_SCORE:
        raise errors.InvalidArgument(
            field, f"must be between {MIN_SCORE} and {MAX_SCORE} when set, not {request.score}"
        )
    return request.score

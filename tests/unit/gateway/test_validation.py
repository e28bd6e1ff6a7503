"""Validation of public requests."""

from __future__ import annotations

import pytest

from chatplane.common import errors
from chatplane.common.ids import new_id
from chatplane.gateway.validation import conversation_title, validate_chat, validate_feedback
from chatplane.v1 import gateway_pb2

LIMIT = 32 * 1024


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (gateway_pb2.ChatRequest(text=""), "text"),
        (gateway_pb2.ChatRequest(text=" \u00a0\n"), "text"),
        (gateway_pb2.ChatRequest(text="é" * (LIMIT // 2 + 1)), "text"),
        (gateway_pb2.ChatRequest(text="a\x00b"), "text"),
        (gateway_pb2.ChatRequest(text="hi", client_message_id="k" * 129), "client_message_id"),
    ],
)
def test_invalid_chat_requests_name_the_field(
    request_: gateway_pb2.ChatRequest, field: str
) -> None:
    with pytest.raises(errors.InvalidArgument) as raised:
        validate_chat(request_, LIMIT)
    assert raised.value.field == field


def test_size_limit_counts_utf8_bytes_and_is_inclusive() -> None:
    validate_chat(gateway_pb2.ChatRequest(text="é" * (LIMIT // 2)), LIMIT)


def test_impossible_conversation_id_is_not_found() -> None:
    with pytest.raises(errors.NotFound):
        validate_chat(gateway_pb2.ChatRequest(text="hi", conversation_id="../etc"), LIMIT)
    validate_chat(gateway_pb2.ChatRequest(text="hi", conversation_id=new_id()), LIMIT)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (gateway_pb2.SubmitFeedbackRequest(rating=gateway_pb2.RATING_THUMBS_UP), "message_id"),
        (gateway_pb2.SubmitFeedbackRequest(message_id=new_id()), "rating"),
        (gateway_pb2.SubmitFeedbackRequest(message_id=new_id(), rating=7), "rating"),  # type: ignore[arg-type]
        (
            gateway_pb2.SubmitFeedbackRequest(
                message_id=new_id(), rating=gateway_pb2.RATING_THUMBS_UP, comment="c" * 5000
            ),
            "comment",
        ),
        (
            gateway_pb2.SubmitFeedbackRequest(
                message_id=new_id(), rating=gateway_pb2.RATING_THUMBS_UP, comment="a\x00b"
            ),
            "comment",
        ),
    ],
)
def test_invalid_feedback_names_the_field(
    request_: gateway_pb2.SubmitFeedbackRequest, field: str
) -> None:
    with pytest.raises(errors.InvalidArgument) as raised:
        validate_feedback(request_, 4096)
    assert raised.value.field == field


def test_title_is_one_line_and_bounded() -> None:
    assert conversation_title("  Plan\n a   trip ") == "Plan a trip"
    title = conversation_title("word " * 100)
    assert len(title) == 80 and title.endswith("…")

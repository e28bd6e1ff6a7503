"""Validation of public requests, before any work is done: every violation names its field."""

from __future__ import annotations

from chatplane.common import errors
from chatplane.common.feedback_score import feedback_score
from chatplane.common.ids import is_valid_id
from chatplane.gateway.branching import validate_branch
from chatplane.v1 import gateway_pb2

MAX_CLIENT_MESSAGE_ID_CHARS = 128


def validate_chat(request: gateway_pb2.ChatRequest, max_message_bytes: int) -> None:
    """Checks a ChatRequest: non-blank text within the size limit, a well-formed key, and a
    conversation id that can exist (an impossible one is NOT_FOUND, like a missing one)."""
    if request.WhichOneof("branch") == "regenerate_message_id":
        pass  # a regenerated answer has no text of its own (gateway/branching.py)
    elif not request.text.strip():
        raise errors.InvalidArgument("text", "must not be empty or whitespace")
    size = len(request.text.encode("utf-8"))
    if size > max_message_bytes:
        raise errors.InvalidArgument(
            "text", f"is {size} bytes; the limit is {max_message_bytes} bytes"
        )
    if "\x00" in request.text:
        raise errors.InvalidArgument("text", "must not contain NUL characters")
    if len(request.client_message_id) > MAX_CLIENT_MESSAGE_ID_CHARS:
        raise errors.InvalidArgument(
            "client_message_id", f"must be at most {MAX_CLIENT_MESSAGE_ID_CHARS} characters"
        )
    validate_branch(request)
    if request.conversation_id and not is_valid_id(request.conversation_id):
        raise errors.NotFound("conversation not found")


def validate_feedback(request: gateway_pb2.SubmitFeedbackRequest, max_comment_bytes: int) -> None:
    """Checks a SubmitFeedbackRequest."""
    if not request.message_id:
        raise errors.InvalidArgument("message_id", "required")
    if request.rating not in (gateway_pb2.RATING_THUMBS_UP, gateway_pb2.RATING_THUMBS_DOWN):
        raise errors.InvalidArgument("rating", "must be RATING_THUMBS_UP or RATING_THUMBS_DOWN")
    if len(request.comment.encode("utf-8")) > max_comment_bytes:
        raise errors.InvalidArgument("comment", f"must be at most {max_comment_bytes} bytes")
    if "\x00" in request.comment:
        raise errors.InvalidArgument("comment", "must not contain NUL characters")
    feedback_score(request)
    if not is_valid_id(request.message_id):
        raise errors.NotFound("message not found")


def conversation_title(text: str) -> str:
    """A title for a new conversation: the start of its first message, on one line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= 80 else flat[:79] + "…"

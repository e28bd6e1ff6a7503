"""Regenerate and edit in the Chat flow (docs/conversation-tree.md): checking the request's
branch fields, reserving a turn in the conversation tree, and what the Agent needs to answer
on the right branch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2

from chatplane.common import errors
from chatplane.common.ids import is_valid_id
from chatplane.common.settings import Settings
from chatplane.common.status_mapping import field_violations
from chatplane.internal.v1 import turn_pb2
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import gateway_pb2

REGENERATE_FIELD = "regenerate_message_id"
EDIT_FIELD = "edit_message_id"
# A turn's answer is stored a few tens of milliseconds after `done` (the log consumer's batch
# wait): a regenerate or edit of it sent at once waits this long for it before it is refused
# as still being answered (FAILED_PRECONDITION).
SETTLE_SECONDS = 1.0
# Persistence returns at most this many branch messages (tree_messages.py).
MAX_BRANCH_LIMIT = 500
_SETTLE_POLL_SECONDS = 0.05

# Seconds a downstream call may take: the caller's remaining time less a margin, capped.
Budget = Callable[[float], float]


def validate_branch(request: gateway_pb2.ChatRequest) -> None:
    """Checks the branch fields of a ChatRequest (after its other fields): a regenerate has no
    text; a message id that cannot exist is NOT_FOUND, like a missing one."""
    branch = request.WhichOneof("branch")
    if branch is None:
        return
    target = getattr(request, branch)
    if branch == REGENERATE_FIELD and request.text:
        raise errors.InvalidArgument(
            "text", "must be empty when regenerating: the answer is to the stored message"
        )
    if not target:
        raise errors.InvalidArgument(branch, "must name a user message")
    if not is_valid_id(target):
        raise errors.NotFound("message not found")


def validate_view(request: gateway_pb2.GetConversationRequest) -> None:
    """Checks a GetConversationRequest's view."""
    if request.view not in gateway_pb2.ConversationView.values():
        raise errors.InvalidArgument("view", "must be a ConversationView")


def branch_fields(request: gateway_pb2.ChatRequest, settings: Settings) -> dict[str, Any]:
    """The BeginTurnRequest fields of a Chat request's branch."""
    return {
        "regenerate_message_id": request.regenerate_message_id,
        "edit_message_id": request.edit_message_id,
        "branch_limit": min(settings.recent_turns, MAX_BRANCH_LIMIT),
    }


def generate_fields(begin: turn_pb2.BeginTurnResponse) -> dict[str, Any]:
    """The GenerateRequest fields that place the answer in the tree."""
    fields: dict[str, Any] = {
        "parent_message_id": begin.parent_message_id,
        "regenerate": begin.regenerate,
    }
    if begin.HasField("branch"):
        fields["branch"] = begin.branch
    return fields


async def begin_turn(
    persistence: PersistenceClient,
    request: turn_pb2.BeginTurnRequest,
    budget: Budget,
    timeout_cap: float,
) -> turn_pb2.BeginTurnResponse:
    """TurnService.BeginTurn. For a regenerate or edit, a message whose answer is not
    stored yet is waited for (SETTLE_SECONDS), and a message of the wrong kind is the caller's
    INVALID_ARGUMENT, naming its field."""
    branched = bool(request.regenerate_message_id or request.edit_message_id)
    settle_until = time.monotonic() + SETTLE_SECONDS
    while True:
        try:
            return await persistence.turns.BeginTurn(request, timeout=budget(timeout_cap))
        except grpc.aio.AioRpcError as error:
            if not branched:
                raise
            code = error.code()
            if code is grpc.StatusCode.INVALID_ARGUMENT:
                violation = _field_violation(error)
                if violation is not None and violation.field in (REGENERATE_FIELD, EDIT_FIELD):
                    raise errors.InvalidArgument(violation.field, violation.description) from error
            if code is not grpc.StatusCode.FAILED_PRECONDITION:
                raise
            if time.monotonic() >= settle_until:
                raise errors.FailedPrecondition(error.details() or "not answered yet") from error
        budget(_SETTLE_POLL_SECONDS)  # raises DeadlineExceeded when the caller's time is up
        await asyncio.sleep(_SETTLE_POLL_SECONDS)


def _field_violation(
    error: grpc.aio.AioRpcError,
) -> error_details_pb2.BadRequest.FieldViolation | None:
    violations = field_violations(error)
    return violations[0] if violations else None

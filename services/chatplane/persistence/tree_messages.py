"""Proto ⇄ domain for the conversation tree in Persistence (docs/conversation-tree.md):
the regenerate / edit fields of BeginTurn, the branch it returns, history views, messages'
places in the tree, and the page tokens of a branch."""

from __future__ import annotations

from typing import Any

from chatplane.common import errors
from chatplane.internal.v1 import turn_pb2
from chatplane.persistence.protos import ROLES, decode_token, encode_token, token_id, token_int
from chatplane.persistence.store.base import (
    BranchCursor,
    ConversationView,
    PlacedMessage,
    TurnReservation,
)
from chatplane.v1 import gateway_pb2, resources_pb2

# The most branch messages one BeginTurn returns (as many as a page of history).
MAX_BRANCH_LIMIT = 500

_VIEWS = {
    gateway_pb2.CONVERSATION_VIEW_UNSPECIFIED: ConversationView.ACTIVE_BRANCH,
    gateway_pb2.CONVERSATION_VIEW_ACTIVE_BRANCH: ConversationView.ACTIVE_BRANCH,
    gateway_pb2.CONVERSATION_VIEW_TREE: ConversationView.TREE,
}
_BRANCH_TOKEN_KIND = "b"


def branch_request(request: turn_pb2.BeginTurnRequest) -> dict[str, Any]:
    """The tree fields of a BeginTurnRequest, as TurnRequest keywords."""
    if request.regenerate_message_id and request.edit_message_id:
        raise errors.InvalidArgument(
            "edit_message_id", "cannot be combined with regenerate_message_id"
        )
    if not 0 <= request.branch_limit <= MAX_BRANCH_LIMIT:
        raise errors.InvalidArgument("branch_limit", f"must be between 0 and {MAX_BRANCH_LIMIT}")
    return {
        "regenerate_message_id": request.regenerate_message_id,
        "edit_message_id": request.edit_message_id,
        "branch_limit": request.branch_limit,
    }


def add_branch(response: turn_pb2.BeginTurnResponse, reservation: TurnReservation) -> None:
    """Fills the tree fields of a BeginTurnResponse."""
    response.parent_message_id = reservation.parent_message_id
    response.regenerate = reservation.regenerate
    response.user_text = reservation.user_text
    if reservation.branch is None:
        return
    response.branch.SetInParent()
    for entry in reservation.branch:
        message = response.branch.messages.add(
            message_id=entry.message_id,
            conversation_id=reservation.conversation_id,
            role=ROLES[entry.role],
        )
        if entry.text is not None:
            message.text = entry.text
            message.status = resources_pb2.MESSAGE_STATUS_COMPLETE


def conversation_view(view: gateway_pb2.ConversationView.ValueType) -> ConversationView:
    """The domain view of a GetConversation request."""
    found = _VIEWS.get(view)
    if found is None:
        raise errors.InvalidArgument("request.view", "unknown view")
    return found


def placed_message(message: resources_pb2.Message, place: PlacedMessage) -> resources_pb2.Message:
    """A history message with its parent and siblings."""
    message.parent_message_id = place.parent_message_id
    message.sibling_index = place.sibling_ids.index(place.message.message_id)
    message.sibling_count = len(place.sibling_ids)
    message.sibling_message_ids.extend(place.sibling_ids)
    return message


def branch_token(cursor: BranchCursor) -> str:
    """The page token of a branch cursor: it pins the branch by its leaf, so later pages go
    on through the same branch."""
    leaf, offset = cursor.leaf_message_id, cursor.offset
    return encode_token(
        {"k": _BRANCH_TOKEN_KIND, "c": cursor.conversation_id, "l": leaf, "o": offset}
    )


def branch_cursor(token: str, field: str, conversation_id: str) -> BranchCursor | None:
    """The branch cursor of a page token (None for the first page)."""
    if not token:
        return None
    fields = decode_token(token, field, _BRANCH_TOKEN_KIND)
    if not isinstance(fields.get("c"), str):
        raise errors.InvalidArgument(field, "not a page token of this list")
    leaf, offset = token_id(fields, "l", field), token_int(fields, "o", field)
    if fields["c"] != conversation_id:
        raise errors.InvalidArgument(field, "a page token of another conversation")
    return BranchCursor(conversation_id, leaf, offset)

"""Proto ⇄ domain for the conversation tree in Persistence (docs/conversation-tree.md):
the regenerate / edit fields of BeginTurn, the branch it returns, history views, messages'
places in the tree, and the page tokens of a branch."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from chatplane.common import errors
from chatplane.common.ids import is_valid_id
from chatplane.internal.v1 import turn_pb2
from chatplane.persistence.store.base import (
    BranchCursor,
    ConversationView,
    PlacedMessage,
    Role,
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
_ROLES = {Role.USER: resources_pb2.ROLE_USER, Role.ASSISTANT: resources_pb2.ROLE_ASSISTANT}
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
            role=_ROLES[entry.role],
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


# A branch's page token: base64url of a small JSON object, like the other page tokens. It
# pins the branch by its leaf, so later pages go on through the same branch.


def branch_token(cursor: BranchCursor) -> str:
    """The page token of a branch cursor."""
    fields = {
        "k": _BRANCH_TOKEN_KIND,
        "c": cursor.conversation_id,
        "l": cursor.leaf_message_id,
        "o": cursor.offset,
    }
    text = json.dumps(fields, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode("ascii")


def branch_cursor(token: str, field: str, conversation_id: str) -> BranchCursor | None:
    """The branch cursor of a page token (None for the first page)."""
    if not token:
        return None
    invalid = errors.InvalidArgument(field, "not a page token of this list")
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        fields = json.loads(raw)
    except (binascii.Error, ValueError) as error:
        raise invalid from error
    if not isinstance(fields, dict) or fields.get("k") != _BRANCH_TOKEN_KIND:
        raise invalid
    conversation, leaf, offset = fields.get("c"), fields.get("l"), fields.get("o")
    if not isinstance(conversation, str) or not isinstance(leaf, str) or not is_valid_id(leaf):
        raise invalid
    if type(offset) is not int or offset < 0:
        raise invalid
    if conversation != conversation_id:
        raise errors.InvalidArgument(field, "a page token of another conversation")
    return BranchCursor(conversation_id, leaf, offset)

"""The regenerate / edit fields of ChatRequest (docs/conversation-tree.md): checked before any
work, with the field named, and an impossible id NOT_FOUND like a missing one."""

from __future__ import annotations

import pytest

from chatplane.common import errors
from chatplane.common.ids import new_id
from chatplane.gateway.branching import validate_view
from chatplane.gateway.validation import validate_chat
from chatplane.v1 import gateway_pb2

LIMIT = 32 * 1024


def test_a_regenerate_has_no_text_and_an_edit_has_one() -> None:
    validate_chat(gateway_pb2.ChatRequest(regenerate_message_id=new_id()), LIMIT)
    validate_chat(gateway_pb2.ChatRequest(text="better", edit_message_id=new_id()), LIMIT)
    with pytest.raises(errors.InvalidArgument) as with_text:
        validate_chat(gateway_pb2.ChatRequest(text="hi", regenerate_message_id=new_id()), LIMIT)
    assert with_text.value.field == "text"
    with pytest.raises(errors.InvalidArgument) as no_text:
        validate_chat(gateway_pb2.ChatRequest(text=" ", edit_message_id=new_id()), LIMIT)
    assert no_text.value.field == "text"


@pytest.mark.parametrize("field", ["regenerate_message_id", "edit_message_id"])
def test_branch_targets_must_be_possible_ids(field: str) -> None:
    text = "" if field == "regenerate_message_id" else "hi"
    with pytest.raises(errors.InvalidArgument) as empty:
        validate_chat(gateway_pb2.ChatRequest(text=text, **{field: ""}), LIMIT)
    assert empty.value.field == field
    with pytest.raises(errors.NotFound):
        validate_chat(gateway_pb2.ChatRequest(text=text, **{field: "../x"}), LIMIT)


def test_the_last_branch_field_set_wins_in_the_oneof() -> None:
    request = gateway_pb2.ChatRequest(regenerate_message_id=new_id())
    request.edit_message_id = new_id()
    assert request.WhichOneof("branch") == "edit_message_id"
    assert request.regenerate_message_id == ""


def test_unknown_views_are_refused() -> None:
    validate_view(gateway_pb2.GetConversationRequest(view=gateway_pb2.CONVERSATION_VIEW_TREE))
    with pytest.raises(errors.InvalidArgument) as raised:
        validate_view(gateway_pb2.GetConversationRequest(view=7))  # type: ignore[arg-type]
    assert raised.value.field == "view"

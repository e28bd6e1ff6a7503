"""Proto ⇄ domain for Persistence's RPCs, shared by its servicers: the owner and required
fields of a request (InvalidArgument naming the field), and conversations and messages as the
contracts show them."""

from __future__ import annotations

from typing import Final

from chatplane.common import errors
from chatplane.common.ids import is_valid_id
from chatplane.common.timestamps import timestamp_of
from chatplane.persistence.store.base import (
    Conversation,
    FinishReason,
    Message,
    MessageStatus,
    Owner,
    Role,
)
from chatplane.v1 import persistence_pb2, resources_pb2

MAX_KEY_CHARS: Final = 256
"""The longest tenant id, user id or client message id a request may carry."""

_ROLES = {Role.USER: resources_pb2.ROLE_USER, Role.ASSISTANT: resources_pb2.ROLE_ASSISTANT}
_STATUSES = {
    MessageStatus.COMPLETE: resources_pb2.MESSAGE_STATUS_COMPLETE,
    MessageStatus.INTERRUPTED: resources_pb2.MESSAGE_STATUS_INTERRUPTED,
}
_FINISH_REASONS = {
    FinishReason.UNSPECIFIED: resources_pb2.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: resources_pb2.FINISH_REASON_STOP,
    FinishReason.MAX_TOKENS: resources_pb2.FINISH_REASON_MAX_TOKENS,
    FinishReason.INTERRUPTED: resources_pb2.FINISH_REASON_INTERRUPTED,
    FinishReason.ERROR: resources_pb2.FINISH_REASON_ERROR,
}


def require(value: str, field: str) -> None:
    """InvalidArgument naming `field` when `value` is empty."""
    if not value:
        raise errors.InvalidArgument(field, "required")


def require_id(value: str, field: str) -> None:
    """InvalidArgument naming `field` unless `value` is a canonical UUID."""
    require(value, field)
    if not is_valid_id(value):
        raise errors.InvalidArgument(field, "must be a UUID in canonical form")


def owner_of(owner: persistence_pb2.Owner) -> Owner:
    """The owner of a request: tenant and user id, both required and bounded."""
    for field, value in (("owner.tenant_id", owner.tenant_id), ("owner.user_id", owner.user_id)):
        require(value, field)
        if len(value) > MAX_KEY_CHARS:
            raise errors.InvalidArgument(field, f"must be at most {MAX_KEY_CHARS} characters")
    return Owner(owner.tenant_id, owner.user_id)


def conversation_proto(conversation: Conversation) -> resources_pb2.Conversation:
    """A conversation as the contracts show it."""
    return resources_pb2.Conversation(
        conversation_id=conversation.conversation_id,
        title=conversation.title,
        create_time=timestamp_of(conversation.create_time),
        update_time=timestamp_of(conversation.update_time),
        message_count=conversation.message_count,
        active_message_id=conversation.active_message_id,
    )


def message_proto(message: Message) -> resources_pb2.Message:
    """A message as the contracts show it (an operator's reply has the operator's role)."""
    proto = resources_pb2.Message(
        message_id=message.message_id,
        conversation_id=message.conversation_id,
        role=_ROLES[message.role],
        text=message.text,
        status=_STATUSES[message.status],
        model=message.model,
        create_time=timestamp_of(message.create_time),
        reply_to_message_id=message.reply_to_message_id,
        finish_reason=_FINISH_REASONS[message.finish_reason],
        client_message_id=message.client_message_id,
    )
    if message.operator_id:  # an operator's reply (docs/handoff.md)
        proto.role = resources_pb2.ROLE_OPERATOR
        proto.operator_id = message.operator_id
    elif message.role is Role.ASSISTANT:
        proto.usage.input_tokens = message.input_tokens
        proto.usage.output_tokens = message.output_tokens
    if message.parent_message_id is not None:
        proto.parent_message_id = message.parent_message_id
    return proto

"""Proto ⇄ domain helpers that Persistence's servicers share: request checks (owner, ids,
page sizes), the store's conversations and messages as protos, and the opaque page tokens."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import grpc

from chatplane.common import errors
from chatplane.common.ids import is_valid_id
from chatplane.common.timestamps import from_micros, timestamp_of, to_micros
from chatplane.persistence.store.base import (
    Conversation,
    FinishReason,
    Message,
    MessageCursor,
    MessageStatus,
    Owner,
    Rating,
    Role,
)
from chatplane.v1 import admin_resources_pb2, gateway_pb2, resources_pb2

Context = grpc.aio.ServicerContext[Any, Any]
"""The servicer context every Persistence RPC receives."""

_Cursor = TypeVar("_Cursor")

# Page sizes as documented on the public API's requests (gateway.proto).
CONVERSATIONS_PAGE = (20, 100)
MESSAGES_PAGE = (100, 500)
MAX_KEY_CHARS = 256

ROLES = {Role.USER: resources_pb2.ROLE_USER, Role.ASSISTANT: resources_pb2.ROLE_ASSISTANT}
STATUSES = {
    MessageStatus.COMPLETE: resources_pb2.MESSAGE_STATUS_COMPLETE,
    MessageStatus.INTERRUPTED: resources_pb2.MESSAGE_STATUS_INTERRUPTED,
}
RATINGS = {
    Rating.THUMBS_UP: gateway_pb2.RATING_THUMBS_UP,
    Rating.THUMBS_DOWN: gateway_pb2.RATING_THUMBS_DOWN,
}
FINISH_REASONS = {
    FinishReason.UNSPECIFIED: resources_pb2.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: resources_pb2.FINISH_REASON_STOP,
    FinishReason.MAX_TOKENS: resources_pb2.FINISH_REASON_MAX_TOKENS,
    FinishReason.INTERRUPTED: resources_pb2.FINISH_REASON_INTERRUPTED,
    FinishReason.ERROR: resources_pb2.FINISH_REASON_ERROR,
}


def require(value: str, field: str) -> None:
    if not value:
        raise errors.InvalidArgument(field, "required")


def require_id(value: str, field: str) -> None:
    require(value, field)
    if not is_valid_id(value):
        raise errors.InvalidArgument(field, "must be a UUID in canonical form")


def at_most(value: str, field: str, limit: int = MAX_KEY_CHARS) -> str:
    """`value` unless it is longer than `limit` characters (InvalidArgument naming `field`)."""
    if len(value) > limit:
        raise errors.InvalidArgument(field, f"must be at most {limit} characters")
    return value


def tenant(value: str) -> str:
    """A tenant id a call names: required, at most MAX_KEY_CHARS."""
    require(value, "tenant_id")
    return at_most(value, "tenant_id")


def owner(proto: admin_resources_pb2.Owner) -> Owner:
    """The owner a call acts for; both ids required, at most MAX_KEY_CHARS each."""
    for field, value in (("owner.tenant_id", proto.tenant_id), ("owner.user_id", proto.user_id)):
        require(value, field)
        at_most(value, field)
    return Owner(proto.tenant_id, proto.user_id)


def owner_proto(value: Owner) -> admin_resources_pb2.Owner:
    return admin_resources_pb2.Owner(tenant_id=value.tenant_id, user_id=value.user_id)


def page_size(value: int, field: str, bounds: tuple[int, int]) -> int:
    default, maximum = bounds
    if value == 0:
        return default
    if not 1 <= value <= maximum:
        raise errors.InvalidArgument(field, f"must be between 1 and {maximum} (0 means {default})")
    return value


def conversation_proto(conversation: Conversation) -> resources_pb2.Conversation:
    return resources_pb2.Conversation(
        conversation_id=conversation.conversation_id,
        title=conversation.title,
        create_time=timestamp_of(conversation.create_time),
        update_time=timestamp_of(conversation.update_time),
        message_count=conversation.message_count,
        active_message_id=conversation.active_message_id,
    )


def message_proto(message: Message) -> resources_pb2.Message:
    proto = resources_pb2.Message(
        message_id=message.message_id,
        conversation_id=message.conversation_id,
        role=ROLES[message.role],
        text=message.text,
        status=STATUSES[message.status],
        model=message.model,
        create_time=timestamp_of(message.create_time),
        reply_to_message_id=message.reply_to_message_id,
        finish_reason=FINISH_REASONS[message.finish_reason],
        client_message_id=message.client_message_id,
        parent_message_id=message.parent_message_id,  # None (before trees): unset
    )
    if message.operator_id:  # an operator's reply (docs/handoff.md)
        proto.role = resources_pb2.ROLE_OPERATOR
        proto.operator_id = message.operator_id
    elif message.role is Role.ASSISTANT:
        proto.usage.input_tokens = message.input_tokens
        proto.usage.output_tokens = message.output_tokens
    return proto


# Page tokens: base64url of a small JSON object. They are opaque to clients and carry the
# keyset position only; a token is decoded strictly, and a token of another conversation is
# refused, so a forged one can at worst page through the caller's own objects.


def encode_token(fields: dict[str, str | int]) -> str:
    text = json.dumps(fields, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode("ascii")


def decode_token(token: str, field: str, kind: str) -> dict[str, Any]:
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        fields = json.loads(raw)
    except (binascii.Error, ValueError) as error:
        raise errors.InvalidArgument(field, "not a page token of this list") from error
    if not isinstance(fields, dict) or fields.get("k") != kind:
        raise errors.InvalidArgument(field, "not a page token of this list")
    return fields


def token_int(fields: dict[str, Any], name: str, field: str) -> int:
    value = fields.get(name)
    if type(value) is not int or value < 0:
        raise errors.InvalidArgument(field, "not a page token of this list")
    return value


def token_time(fields: dict[str, Any], name: str, field: str) -> datetime:
    try:
        return from_micros(token_int(fields, name, field))
    except OverflowError as error:
        raise errors.InvalidArgument(field, "not a page token of this list") from error


def token_id(fields: dict[str, Any], name: str, field: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not is_valid_id(value):
        raise errors.InvalidArgument(field, "not a page token of this list")
    return value


def position_token(kind: str, cursor: Any) -> str:
    """The page token of a keyset cursor (a time, then an id: a pair or a dataclass of
    those) in a list of `kind`; "" for None (the last page)."""
    if cursor is None:
        return ""
    moment, position_id = cursor if isinstance(cursor, tuple) else dataclasses.astuple(cursor)
    return encode_token({"k": kind, "t": to_micros(moment), "id": position_id})


def position_cursor(
    token: str, field: str, kind: str, make: Callable[[datetime, str], _Cursor]
) -> _Cursor | None:
    """The cursor of a `position_token` of `kind`, made by `make`; None for no token."""
    if not token:
        return None
    fields = decode_token(token, field, kind)
    return make(token_time(fields, "t", field), token_id(fields, "id", field))


def message_token(cursor: MessageCursor | None) -> str:
    if cursor is None:
        return ""
    return encode_token(
        {
            "k": "m",
            "c": cursor.conversation_id,
            "t": to_micros(cursor.create_time),
            "p": cursor.position,
        }
    )


def message_cursor(token: str, field: str, conversation_id: str) -> MessageCursor | None:
    if not token:
        return None
    fields = decode_token(token, field, "m")
    if token_id(fields, "c", field) != conversation_id:
        raise errors.InvalidArgument(field, "a page token of another conversation")
    return MessageCursor(
        conversation_id,
        token_time(fields, "t", field),
        token_int(fields, "p", field),
    )

"""Rows of the store and its domain objects: the rules that decide which messages of a batch
are stored, and the conversion between rows and messages or conversations."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from chatplane.persistence.store.base import (
    Conversation,
    FinishReason,
    Message,
    MessagesRejected,
    MessageStatus,
    Owner,
    Role,
)

MESSAGE_COLUMNS = (
    "message_id, conversation_id, tenant_id, user_id, role, text, status, model,"
    " create_time, reply_to_message_id, finish_reason, input_tokens, output_tokens,"
    " client_message_id, parent_message_id, operator_id"
)
"""The `messages` columns of `message_row` and `message_from_row`, in order."""
CONVERSATION_COLUMNS = (
    "conversation_id, tenant_id, user_id, title, create_time, update_time, message_count"
)
"""The `conversations` columns of `conversation_from_row`, in order."""


def utc(moment: datetime) -> datetime:
    """A timestamptz read from the database, in UTC whatever the session's TimeZone."""
    return moment.astimezone(UTC)


def admit_batch(
    messages: Sequence[Message],
    owners: dict[str, Owner],
    deleted: set[str],
    placed: dict[str, tuple[str, Owner]],
) -> tuple[list[Message], list[str]]:
    """Decide, before writing anything, which messages of a batch to insert, given the stored
    owners of its conversations, their tombstones and where its message ids are stored already:
    returns the messages and the conversations to create for them, or raises MessagesRejected."""
    accepted: list[Message] = []
    created: list[str] = []
    rejected: dict[int, str] = {}
    for index, message in enumerate(messages):
        if message.conversation_id in deleted:
            continue
        owner = owners.get(message.conversation_id)
        if owner is None:
            owners[message.conversation_id] = message.owner
            created.append(message.conversation_id)
        elif owner != message.owner:
            rejected[index] = "conversation belongs to another owner"
            continue
        place = placed.get(message.message_id)
        if place is not None:
            # Re-delivered (or repeated in this batch): stored once already. The same id in
            # another conversation or of another owner is a forged or broken record.
            if place != (message.conversation_id, message.owner):
                rejected[index] = "message id is stored for another conversation"
            continue
        placed[message.message_id] = (message.conversation_id, message.owner)
        accepted.append(message)
    if rejected:
        raise MessagesRejected(rejected)
    return accepted, created


def message_row(message: Message) -> tuple[Any, ...]:
    """A message as the values of the stores' message columns, in their order."""
    return (
        message.message_id,
        message.conversation_id,
        message.owner.tenant_id,
        message.owner.user_id,
        message.role.value,
        message.text,
        message.status.value,
        message.model,
        message.create_time,
        message.reply_to_message_id,
        message.finish_reason.value,
        message.input_tokens,
        message.output_tokens,
        message.client_message_id,
        message.parent_message_id,
        message.operator_id,
    )


def message_from_row(row: Sequence[Any]) -> Message:
    """The message of a row of the stores' message columns."""
    return Message(
        message_id=row[0],
        conversation_id=row[1],
        owner=Owner(row[2], row[3]),
        role=Role(row[4]),
        text=row[5],
        status=MessageStatus(row[6]),
        model=row[7],
        create_time=utc(row[8]),
        reply_to_message_id=row[9],
        finish_reason=FinishReason(row[10]),
        input_tokens=row[11],
        output_tokens=row[12],
        client_message_id=row[13],
        parent_message_id=row[14],
        operator_id=row[15],
    )


def conversation_from_row(row: Sequence[Any]) -> Conversation:
    """The conversation of a row of the stores' conversation columns."""
    conversation_id, tenant_id, user_id, title, create_time, update_time, count = row
    return Conversation(
        conversation_id,
        Owner(tenant_id, user_id),
        title,
        utc(create_time),
        utc(update_time),
        count,
    )

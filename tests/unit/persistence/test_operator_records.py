"""Operator replies on the message log (docs/handoff.md): decoded as the conversation's other
side with their author; one without its author is refused (dead-lettered by the consumer)."""

from __future__ import annotations

import pytest

from chatplane.common.ids import new_id
from chatplane.common.topics import MESSAGE_SCHEMA_VERSION, MESSAGES_TOPIC
from chatplane.internal.v1 import events_pb2
from chatplane.log.base import ConsumedRecord
from chatplane.persistence.consumer import InvalidRecord, decode_message
from chatplane.persistence.store.base import Role
from chatplane.v1 import resources_pb2


def record(operator_id: str, role: resources_pb2.Role.ValueType) -> ConsumedRecord:
    value = events_pb2.MessageRecorded(
        schema_version=MESSAGE_SCHEMA_VERSION,
        tenant_id="t",
        user_id="u",
        message=resources_pb2.Message(
            message_id=new_id(),
            conversation_id=new_id(),
            role=role,
            text="Hi, Sam here.",
            status=resources_pb2.MESSAGE_STATUS_COMPLETE,
            operator_id=operator_id,
        ),
    ).SerializeToString()
    return ConsumedRecord(MESSAGES_TOPIC, 0, 0, b"", value, (), 1_700_000_000_000)


def test_an_operator_reply_keeps_its_author() -> None:
    message = decode_message(record("sam", resources_pb2.ROLE_OPERATOR))
    assert message.role is Role.ASSISTANT and message.operator_id == "sam"


def test_an_operator_reply_without_its_author_is_refused() -> None:
    with pytest.raises(InvalidRecord, match="operator_id"):
        decode_message(record("", resources_pb2.ROLE_OPERATOR))


def test_only_operator_replies_carry_an_author() -> None:
    assert decode_message(record("sam", resources_pb2.ROLE_ASSISTANT)).operator_id == ""

"""Parent ids in message-log records: stored as recorded, absent (older records) as unknown,
and a malformed one dead-lettered."""

from __future__ import annotations

import pytest

from chatplane.common.ids import new_id
from chatplane.common.topics import MESSAGES_TOPIC
from chatplane.internal.v1 import events_pb2
from chatplane.log import ConsumedRecord
from chatplane.persistence.consumer import InvalidRecord, decode_message
from chatplane.v1 import resources_pb2


def record(**fields: str) -> ConsumedRecord:
    recorded = events_pb2.MessageRecorded(
        schema_version=1,
        tenant_id="t",
        user_id="u",
        message=resources_pb2.Message(
            message_id=new_id(),
            conversation_id=new_id(),
            role=resources_pb2.ROLE_USER,
            text="hi",
            status=resources_pb2.MESSAGE_STATUS_COMPLETE,
            **fields,
        ),
    )
    return ConsumedRecord(MESSAGES_TOPIC, 0, 0, b"k", recorded.SerializeToString(), (), 1)


def test_parent_ids_are_decoded_with_their_presence() -> None:
    parent = new_id()
    assert decode_message(record(parent_message_id=parent)).parent_message_id == parent
    assert decode_message(record(parent_message_id="")).parent_message_id == ""
    assert decode_message(record()).parent_message_id is None


def test_a_malformed_parent_id_is_an_invalid_record() -> None:
    with pytest.raises(InvalidRecord, match="parent_message_id"):
        decode_message(record(parent_message_id="nope"))

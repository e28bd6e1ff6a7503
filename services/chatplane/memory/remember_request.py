"""A RememberRequest (the Remember RPC's, sent by `chatplane memory rebuild`) as
ConversationalMemory takes it."""

from __future__ import annotations

from chatplane.internal.v1 import memory_pb2
from chatplane.memory.conversational_memory import RememberedMessage
from chatplane.v1 import resources_pb2

ROLE_NAMES = {resources_pb2.ROLE_USER: "user", resources_pb2.ROLE_ASSISTANT: "assistant"}


def remembered_messages(request: memory_pb2.RememberRequest) -> list[RememberedMessage]:
    """The request's messages; KeyError for a role other than user or assistant."""
    return [
        RememberedMessage(
            message_id=m.message_id,
            role=ROLE_NAMES[m.role],
            text=m.text,
            created_at_ms=m.create_time_unix_ms,
        )
        for m in request.messages
    ]

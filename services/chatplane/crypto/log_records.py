"""Sealing the personal text of message-log records (chatplane.messages, chatplane.handoff)
before they are appended, and opening it where a consumer needs the text (the Gateway's
handoff fan-out; Memory's indexer opens chatplane.messages with the keyring itself).
Persistence stores the sealed text of chatplane.messages as it is: the log and the database
hold the same envelope.
"""

from __future__ import annotations

from chatplane.crypto.keyring import Keyring
from chatplane.internal.v1 import events_pb2
from chatplane.v1 import resources_pb2


async def sealed_message(
    keyring: Keyring | None, tenant_id: str, user_id: str, message: resources_pb2.Message
) -> resources_pb2.Message:
    """A copy of `message` with its text sealed for its owner (itself without a keyring)."""
    if keyring is None or not message.text:
        return message
    sealed = resources_pb2.Message()
    sealed.CopyFrom(message)
    sealed.text = await keyring.seal(tenant_id, user_id, message.message_id, message.text)
    return sealed


async def sealed_handoff_event(
    keyring: Keyring | None, event: events_pb2.HandoffEvent
) -> events_pb2.HandoffEvent:
    """The event with the reason of a request or release sealed (a user's own words, bound
    to the conversation); an operator reply is sealed by `sealed_message` already."""
    kind = event.WhichOneof("event")
    if keyring is None or kind not in ("requested", "released"):
        return event
    status = event.requested if kind == "requested" else event.released
    status.reason = await keyring.seal(
        event.tenant_id, event.user_id, event.conversation_id, status.reason
    )
    return event


async def opened_handoff_event(
    keyring: Keyring | None, event: events_pb2.HandoffEvent
) -> events_pb2.HandoffEvent:
    """The event with an operator reply's text, or a request's or release's reason, opened
    (ERASED_TEXT when it cannot be)."""
    kind = event.WhichOneof("event")
    if keyring is None or kind is None:
        return event
    if kind == "operator_reply":
        reply = event.operator_reply
        reply.text = await keyring.open_or_erased(
            event.tenant_id, event.user_id, reply.text, reply.message_id
        )
        return event
    status = event.requested if kind == "requested" else event.released
    status.reason = await keyring.open_or_erased(
        event.tenant_id, event.user_id, status.reason, event.conversation_id
    )
    return event

"""Sealing and opening the text of message-log records: MessageRecorded's message, a
HandoffEvent's operator reply."""

from __future__ import annotations

from chatplane.crypto.envelope import is_sealed
from chatplane.crypto.kek import new_kek_line, parse_keks
from chatplane.crypto.keyring import ERASED_TEXT, Keyring, StoreKeySource, WrappedDataKey
from chatplane.crypto.log_records import (
    opened_handoff_event,
    sealed_handoff_event,
    sealed_message,
)
from chatplane.internal.v1 import events_pb2
from chatplane.v1 import resources_pb2

MESSAGE = "11111111-1111-4111-8111-111111111111"


class _Keys:
    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], WrappedDataKey] = {}

    async def get_data_key(self, tenant_id: str, user_id: str) -> WrappedDataKey | None:
        return self.keys.get((tenant_id, user_id))

    async def add_data_key(self, key: WrappedDataKey) -> WrappedDataKey:
        return self.keys.setdefault((key.tenant_id, key.user_id), key)

    async def rewrap_data_key(self, key: WrappedDataKey) -> None:
        self.keys[(key.tenant_id, key.user_id)] = key

    async def delete_data_key(self, tenant_id: str, user_id: str) -> bool:
        return self.keys.pop((tenant_id, user_id), None) is not None


def _keyring() -> Keyring:
    keks = parse_keks(new_kek_line("k"), "test")
    return Keyring(StoreKeySource(_Keys(), keks), keks)


async def test_a_message_is_sealed_in_a_copy_and_without_a_keyring_left_alone() -> None:
    keyring = _keyring()
    message = resources_pb2.Message(message_id=MESSAGE, text="secret plan")
    sealed = await sealed_message(keyring, "t", "u", message)
    assert message.text == "secret plan"  # the caller's message is untouched
    assert is_sealed(sealed.text) and sealed.message_id == MESSAGE
    assert await keyring.open("t", "u", sealed.text, MESSAGE) == "secret plan"
    assert await sealed_message(None, "t", "u", message) is message


async def test_an_operator_reply_is_opened_for_watchers() -> None:
    keyring = _keyring()
    reply = await sealed_message(
        keyring, "t", "u", resources_pb2.Message(message_id=MESSAGE, text="hello from a person")
    )
    event = events_pb2.HandoffEvent(tenant_id="t", user_id="u", operator_reply=reply)
    assert (await opened_handoff_event(keyring, event)).operator_reply.text == "hello from a person"
    sealed_again = events_pb2.HandoffEvent(tenant_id="t", user_id="u", operator_reply=reply)
    await keyring.destroy_user_key("t", "u")
    opened = await opened_handoff_event(keyring, sealed_again)
    assert opened.operator_reply.text == ERASED_TEXT


async def test_a_handoff_reason_is_sealed_in_the_log_and_opened_for_watchers() -> None:
    keyring = _keyring()
    event = events_pb2.HandoffEvent(tenant_id="t", user_id="u", conversation_id=MESSAGE)
    event.requested.reason = "my card was charged twice"
    sealed = await sealed_handoff_event(keyring, event)
    assert is_sealed(sealed.requested.reason)
    copy = events_pb2.HandoffEvent.FromString(sealed.SerializeToString())
    opened = await opened_handoff_event(keyring, copy)
    assert opened.requested.reason == "my card was charged twice"

"""The Gateway relays AgentService events as ChatResponse without re-encoding them: the two
messages must keep the same oneof layout (field numbers, names and types)."""

from __future__ import annotations

from chatplane.internal.v1 import agent_pb2
from chatplane.v1 import gateway_pb2, resources_pb2


def layout(descriptor: object) -> list[tuple[int, str, str]]:
    fields = descriptor.fields  # type: ignore[attr-defined]
    return sorted((f.number, f.name, f.message_type.full_name) for f in fields)


def test_generate_response_and_chat_response_are_wire_compatible() -> None:
    assert layout(agent_pb2.GenerateResponse.DESCRIPTOR) == layout(
        gateway_pb2.ChatResponse.DESCRIPTOR
    )


def test_an_agent_event_decodes_as_the_same_chat_event() -> None:
    event = agent_pb2.GenerateResponse(
        delta=resources_pb2.TextDelta(text="hé", sequence=7, emit_time_unix_nanos=123)
    )
    relayed = gateway_pb2.ChatResponse.FromString(event.SerializeToString())
    assert relayed.WhichOneof("event") == "delta"
    assert (relayed.delta.text, relayed.delta.sequence) == ("hé", 7)

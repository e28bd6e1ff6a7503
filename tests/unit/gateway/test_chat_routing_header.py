"""The Gateway names the conversation in the metadata of its call to the Agent, so the mesh can
hash it to one Agent replica (istio/base/networking/agent.yaml)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from chatplane.common.context import Principal
from chatplane.common.settings import Settings
from chatplane.gateway.chat import CONVERSATION_ID_HEADER, ChatRelay
from chatplane.internal.v1 import agent_pb2, agent_pb2_grpc, turn_pb2
from chatplane.v1 import gateway_pb2, resources_pb2

CONVERSATION = "0b0f6c8e-7d1a-4a53-9c0e-3f1f9b7c2a11"


class RecordingAgent(agent_pb2_grpc.AgentServiceServicer):
    """An AgentService that answers `done` and keeps the metadata of each call."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    async def Generate(  # noqa: N802 - the RPC's name
        self, request: agent_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.GenerateResponse]:
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        yield agent_pb2.GenerateResponse(
            done=resources_pb2.TurnDone(finish_reason=resources_pb2.FINISH_REASON_STOP)
        )


class OwnedTurns:
    """The one Persistence call of a fresh turn: BeginTurn grants ownership in CONVERSATION."""

    @property
    def turns(self) -> OwnedTurns:
        """Stands in for PersistenceClient: the one service it fakes is itself."""
        return self

    async def BeginTurn(  # noqa: N802 - the RPC's name
        self, request: turn_pb2.BeginTurnRequest, timeout: float
    ) -> turn_pb2.BeginTurnResponse:
        return turn_pb2.BeginTurnResponse(
            owner=True,
            conversation_id=CONVERSATION,
            user_message_id=request.user_message_id,
            assistant_message_id=request.assistant_message_id,
        )


@pytest.mark.asyncio
async def test_the_call_to_the_agent_carries_the_conversation_id_header() -> None:
    agent = RecordingAgent()
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(agent, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            relay = ChatRelay(
                settings=Settings(),
                persistence=OwnedTurns(),  # type: ignore[arg-type]
                agent_channel=channel,
            )
            events = [
                event
                async for event in relay.chat(
                    Principal(tenant_id="t", user_id="u", key_id="k"),
                    gateway_pb2.ChatRequest(text="hello"),
                    budget=lambda seconds: seconds,
                    trace=(("x-request-id", "req-1"),),
                )
            ]
    finally:
        await server.stop(None)
    assert [e.WhichOneof("event") for e in events] == ["done"]
    (metadata,) = agent.metadata
    assert metadata[CONVERSATION_ID_HEADER] == CONVERSATION
    assert metadata["x-request-id"] == "req-1"  # the trace context still travels with it

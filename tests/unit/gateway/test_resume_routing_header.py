"""ResumeChat and CancelChat reach the Agent replica that runs the turn: their calls carry the
turn's conversation id as the same routing header as Generate (istio/base/networking/agent.yaml),
and the request names the caller, never ids taken from the client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from chatplane.common.context import Principal
from chatplane.common.settings import Settings
from chatplane.gateway.chat import CONVERSATION_ID_HEADER
from chatplane.gateway.resume import AnswerResume
from chatplane.internal.v1 import agent_pb2, agent_pb2_grpc, turn_pb2
from chatplane.v1 import gateway_pb2, resources_pb2

CONVERSATION = "0b0f6c8e-7d1a-4a53-9c0e-3f1f9b7c2a11"
ANSWER = "5c0a3a5e-3b9e-4d7e-8f39-6a3f1a2b9c10"


class RecordingAgent(agent_pb2_grpc.AgentServiceServicer):
    """An AgentService with one live turn; keeps each call's metadata and request."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], object]] = []

    async def ResumeGenerate(  # noqa: N802 - the RPC's name
        self, request: agent_pb2.ResumeGenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.ResumeGenerateResponse]:
        self.calls.append(({k: str(v) for k, v in context.invocation_metadata() or ()}, request))
        yield agent_pb2.ResumeGenerateResponse(
            delta=resources_pb2.TextDelta(text="rest", sequence=request.after_sequence + 1)
        )
        yield agent_pb2.ResumeGenerateResponse(done=resources_pb2.TurnDone(delta_count=3))

    async def CancelGenerate(  # noqa: N802 - the RPC's name
        self, request: agent_pb2.CancelGenerateRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.CancelGenerateResponse:
        self.calls.append(({k: str(v) for k, v in context.invocation_metadata() or ()}, request))
        return agent_pb2.CancelGenerateResponse(cancelled=True)


class PendingAnswer:
    """GetAnswer of a turn still generating in CONVERSATION."""

    @property
    def turns(self) -> PendingAnswer:
        """Stands in for PersistenceClient: the one service it fakes is itself."""
        return self

    async def GetAnswer(  # noqa: N802 - the RPC's name
        self, request: turn_pb2.GetAnswerRequest, timeout: float
    ) -> turn_pb2.GetAnswerResponse:
        assert (request.owner.tenant_id, request.owner.user_id) == ("t", "u")
        return turn_pb2.GetAnswerResponse(conversation_id=CONVERSATION)


@pytest.mark.asyncio
async def test_resume_and_cancel_carry_the_conversation_id_header() -> None:
    agent = RecordingAgent()
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(agent, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    principal = Principal(tenant_id="t", user_id="u", key_id="k")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            resume = AnswerResume(
                settings=Settings(),
                persistence=PendingAnswer(),  # type: ignore[arg-type]
                agent_channel=channel,
            )
            events = [
                event
                async for event in resume.resume(
                    principal,
                    gateway_pb2.ResumeChatRequest(message_id=ANSWER, after_sequence=2),
                    budget=lambda seconds: seconds,
                    trace=(("x-request-id", "req-1"),),
                )
            ]
            cancelled = await resume.cancel(
                principal,
                gateway_pb2.CancelChatRequest(message_id=ANSWER),
                budget=lambda seconds: seconds,
            )
    finally:
        await server.stop(None)
    assert [e.WhichOneof("event") for e in events] == ["delta", "done"]
    assert events[0].delta.sequence == 3
    assert cancelled.cancelled
    (resume_metadata, resume_request), (cancel_metadata, cancel_request) = agent.calls
    assert resume_metadata[CONVERSATION_ID_HEADER] == CONVERSATION
    assert resume_metadata["x-request-id"] == "req-1"
    assert cancel_metadata[CONVERSATION_ID_HEADER] == CONVERSATION
    for request in (resume_request, cancel_request):
        assert (request.tenant_id, request.user_id) == ("t", "u")  # type: ignore[attr-defined]
        assert request.assistant_message_id == ANSWER  # type: ignore[attr-defined]

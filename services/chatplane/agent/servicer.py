"""AgentService servicer: translates GenerateRequest into a turn and the turn's events into
GenerateResponse messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from chatplane.agent.branch_context import branch_lines
from chatplane.agent.live_turns import LiveTurns
from chatplane.agent.resume import resumable_events, resumed_events
from chatplane.agent.turn import TurnEvent, TurnRequest, TurnRunner
from chatplane.common import errors
from chatplane.common.deadlines import outbound_timeout
from chatplane.common.ids import is_valid_id
from chatplane.common.trace_context import propagated
from chatplane.internal.v1 import agent_pb2, agent_pb2_grpc
from chatplane.v1 import resources_pb2


def _response(event: TurnEvent) -> agent_pb2.GenerateResponse:
    if isinstance(event, resources_pb2.TextDelta):
        return agent_pb2.GenerateResponse(delta=event)
    if isinstance(event, resources_pb2.TurnStarted):
        return agent_pb2.GenerateResponse(started=event)
    if isinstance(event, resources_pb2.Citation):
        return agent_pb2.GenerateResponse(citation=event)
    if isinstance(event, resources_pb2.Usage):
        return agent_pb2.GenerateResponse(usage=event)
    return agent_pb2.GenerateResponse(done=event)


def _turn(
    request: agent_pb2.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> TurnRequest:
    if not request.tenant_id or not request.user_id:
        raise errors.InvalidArgument("tenant_id", "tenant_id and user_id are required")
    for field in ("conversation_id", "user_message_id", "assistant_message_id"):
        if not is_valid_id(getattr(request, field)):
            raise errors.InvalidArgument(field, "must be an id")
    if not request.text.strip():
        raise errors.InvalidArgument("text", "must not be empty")
    if request.parent_message_id and not is_valid_id(request.parent_message_id):
        raise errors.InvalidArgument("parent_message_id", "must be an id")
    return TurnRequest(
        tenant_id=request.tenant_id,
        user_id=request.user_id,
        conversation_id=request.conversation_id,
        user_message_id=request.user_message_id,
        assistant_message_id=request.assistant_message_id,
        text=request.text,
        client_message_id=request.client_message_id,
        trace_headers=propagated(context.invocation_metadata() or ()),
        parent_message_id=request.parent_message_id,
        regenerate=request.regenerate,
        branch=branch_lines(request.branch) if request.HasField("branch") else None,
        pinned_variant=request.variant,
    )


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """AgentService over a TurnRunner."""

    def __init__(self, runner: TurnRunner, live: LiveTurns | None = None) -> None:
        self._runner = runner
        self._live = (
            live
            if live is not None
            else LiveTurns(linger_seconds=0, max_finished=0, turn_timeout_seconds=300)
        )

    async def Generate(
        self,
        request: agent_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[agent_pb2.GenerateResponse]:
        turn = _turn(request, context)
        if request.resumable:
            detached = resumable_events(
                self._live, self._runner, turn, context, self._live.turn_timeout_seconds
            )
            async for event in detached:
                yield _response(event)
            return
        live = self._live.open(turn)
        events = self._runner.run(turn, lambda cap: outbound_timeout(context, cap))
        try:
            async for event in events:
                live.publish(event)
                yield _response(event)
        finally:
            # Closing runs the turn's clean-up now (records a partial answer), not at GC time.
            await events.aclose()
            self._live.close(live)

    async def ResumeGenerate(
        self,
        request: agent_pb2.ResumeGenerateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[agent_pb2.ResumeGenerateResponse]:
        async for response in resumed_events(self._live, request):
            yield response

    async def CancelGenerate(
        self,
        request: agent_pb2.CancelGenerateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> agent_pb2.CancelGenerateResponse:
        cancelled = self._live.cancel(
            request.tenant_id, request.user_id, request.assistant_message_id
        )
        return agent_pb2.CancelGenerateResponse(cancelled=cancelled)

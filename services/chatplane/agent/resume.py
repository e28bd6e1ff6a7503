"""AgentService's side of resume: a resumable turn runs detached and its caller follows it; a
resumer follows a live (or just finished) turn after the delta it last received."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from chatplane.agent.live_turns import LiveTurns
from chatplane.agent.turn import TurnEvent, TurnRequest, TurnRunner
from chatplane.common import errors
from chatplane.common.ids import is_valid_id
from chatplane.internal.v1 import agent_pb2
from chatplane.v1 import resources_pb2


async def resumable_events(
    live_turns: LiveTurns,
    runner: TurnRunner,
    turn: TurnRequest,
    context: grpc.aio.ServicerContext[Any, Any],
    default_timeout_seconds: float,
) -> AsyncIterator[TurnEvent]:
    """Starts the turn detached (bounded by the call's deadline) and follows it. Cancelling
    this iterator (the client went away) stops following, not generating; a failure of the
    turn is raised here as it would be by the turn itself."""
    remaining = context.time_remaining()
    live = live_turns.start_detached(
        turn, runner.run, remaining if remaining is not None else default_timeout_seconds
    )
    async for event in live.follow(0, resumed=False):
        yield event
    if live.error is not None:
        raise live.error


def _resume_response(event: TurnEvent) -> agent_pb2.ResumeGenerateResponse:
    if isinstance(event, resources_pb2.TextDelta):
        return agent_pb2.ResumeGenerateResponse(delta=event)
    if isinstance(event, resources_pb2.TurnStarted):
        return agent_pb2.ResumeGenerateResponse(started=event)
    if isinstance(event, resources_pb2.Citation):
        return agent_pb2.ResumeGenerateResponse(citation=event)
    if isinstance(event, resources_pb2.Usage):
        return agent_pb2.ResumeGenerateResponse(usage=event)
    return agent_pb2.ResumeGenerateResponse(done=event)


async def resumed_events(
    live_turns: LiveTurns, request: agent_pb2.ResumeGenerateRequest
) -> AsyncIterator[agent_pb2.ResumeGenerateResponse]:
    """The owner's live turn after `after_sequence`; NotFound when this Agent has none."""
    if not request.tenant_id or not request.user_id:
        raise errors.InvalidArgument("tenant_id", "tenant_id and user_id are required")
    if not is_valid_id(request.assistant_message_id):
        raise errors.NotFound("no live answer for this message")
    live = live_turns.find(request.tenant_id, request.user_id, request.assistant_message_id)
    async for event in live.follow(request.after_sequence, resumed=True):
        yield _resume_response(event)

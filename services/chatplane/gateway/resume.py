"""ResumeChat and CancelChat: the rest of an answer whose stream was lost, after the delta the
client last received, from the Agent generating it while it runs, else from the stored answer
with the delta boundaries it was streamed with; never a second generation (docs/resume.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc

from chatplane.common import errors
from chatplane.common.context import Principal
from chatplane.common.ids import is_valid_id
from chatplane.common.settings import Settings
from chatplane.gateway.chat import CONVERSATION_ID_HEADER, Budget
from chatplane.internal.v1 import agent_pb2, agent_pb2_grpc, turn_pb2
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_resources_pb2, gateway_pb2, resources_pb2

RESUME_METHOD = "/chatplane.internal.v1.AgentService/ResumeGenerate"
# How long a resume waits for an answer that is no longer live to appear in storage (normally
# one Persistence batch window; longer means the generation was lost with its Agent).
_STORED_WAIT_SECONDS = 10.0
_POLL_SECONDS = 0.05


class AnswerResume:
    """Resumes and cancels the answers of authenticated principals."""

    def __init__(
        self,
        *,
        settings: Settings,
        persistence: PersistenceClient,
        agent_channel: grpc.aio.Channel,
    ) -> None:
        self._settings = settings
        self._persistence = persistence
        # Decoded straight into the public event: the two oneofs have the same layout.
        self._follow = agent_channel.unary_stream(
            RESUME_METHOD,
            request_serializer=agent_pb2.ResumeGenerateRequest.SerializeToString,
            response_deserializer=gateway_pb2.ResumeChatResponse.FromString,
        )
        self._agent = agent_pb2_grpc.AgentServiceStub(agent_channel)

    async def resume(
        self,
        principal: Principal,
        request: gateway_pb2.ResumeChatRequest,
        budget: Budget,
        trace: tuple[tuple[str, str], ...] = (),
    ) -> AsyncIterator[gateway_pb2.ResumeChatResponse]:
        """`started` (marked resumed), the deltas after `after_sequence`, usage and done."""
        if request.after_sequence < 0:
            raise errors.InvalidArgument("after_sequence", "must not be negative")
        answer = await self._answer(principal, request.message_id, budget)
        last = request.after_sequence
        started = False
        if not answer.HasField("assistant_message"):
            call = self._follow(
                agent_pb2.ResumeGenerateRequest(
                    tenant_id=principal.tenant_id,
                    user_id=principal.user_id,
                    assistant_message_id=request.message_id,
                    after_sequence=request.after_sequence,
                ),
                timeout=budget(self._settings.turn_timeout_seconds),
                # The same Agent replica as the turn's (the mesh hashes this header).
                metadata=(*trace, (CONVERSATION_ID_HEADER, answer.conversation_id)),
            )
            try:
                async for event in call:
                    kind = event.WhichOneof("event")
                    if kind == "started":
                        started = True
                    elif kind == "delta":
                        last = event.delta.sequence
                    yield event
                    if kind == "done":
                        return
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise errors.InvalidArgument(
                        "after_sequence", "beyond the deltas of the answer so far"
                    ) from error
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                # Not live on that Agent (finished a while ago, or the Agent restarted).
            finally:
                call.cancel()
            # Not live, or ended unfinished: the rest is (about to be) stored.
            answer = await self._stored(principal, request.message_id, budget)
        for event in stored_events(request, answer, after=last, with_started=not started):
            yield event

    async def cancel(
        self,
        principal: Principal,
        request: gateway_pb2.CancelChatRequest,
        budget: Budget,
        trace: tuple[tuple[str, str], ...] = (),
    ) -> gateway_pb2.CancelChatResponse:
        """Stops the answer's generation if it still runs; the partial answer is stored."""
        answer = await self._answer(principal, request.message_id, budget)
        if answer.HasField("assistant_message"):
            return gateway_pb2.CancelChatResponse(cancelled=False)
        response = await self._agent.CancelGenerate(
            agent_pb2.CancelGenerateRequest(
                tenant_id=principal.tenant_id,
                user_id=principal.user_id,
                assistant_message_id=request.message_id,
            ),
            timeout=budget(self._settings.internal_call_timeout_seconds),
            metadata=(*trace, (CONVERSATION_ID_HEADER, answer.conversation_id)),
        )
        return gateway_pb2.CancelChatResponse(cancelled=response.cancelled)

    async def _answer(
        self, principal: Principal, message_id: str, budget: Budget
    ) -> turn_pb2.GetAnswerResponse:
        """The principal's turn answered by `message_id`; NotFound for any other id."""
        if not is_valid_id(message_id):
            raise errors.NotFound("message not found")
        answer: turn_pb2.GetAnswerResponse = await self._persistence.turns.GetAnswer(
            turn_pb2.GetAnswerRequest(
                owner=admin_resources_pb2.Owner(
                    tenant_id=principal.tenant_id, user_id=principal.user_id
                ),
                assistant_message_id=message_id,
            ),
            timeout=budget(self._settings.internal_call_timeout_seconds),
        )
        return answer

    async def _stored(
        self, principal: Principal, message_id: str, budget: Budget
    ) -> turn_pb2.GetAnswerResponse:
        """Waits (briefly) for the answer to be stored."""
        give_up = time.monotonic() + _STORED_WAIT_SECONDS
        while True:
            answer = await self._answer(principal, message_id, budget)
            if answer.HasField("assistant_message"):
                return answer
            if answer.lease_expire_time.ToMilliseconds() <= int(time.time() * 1000):
                # Its generation failed before the first token: there is no answer to resume.
                raise errors.NotFound("this message has no answer")
            if time.monotonic() >= give_up:
                raise errors.Unavailable("the answer is not available yet; retry")
            budget(_POLL_SECONDS)  # raises DeadlineExceeded when the caller's time is up
            await asyncio.sleep(_POLL_SECONDS)


def stored_events(
    request: gateway_pb2.ResumeChatRequest,
    answer: turn_pb2.GetAnswerResponse,
    *,
    after: int,
    with_started: bool,
) -> list[gateway_pb2.ResumeChatResponse]:
    """The events of a stored answer after the delta `after`: its text cut where the deltas
    ended when it was streamed (one delta when that is not known)."""
    message = answer.assistant_message
    text = message.text
    ends = list(answer.delta_ends) or ([len(text)] if text else [])
    if request.after_sequence > len(ends):
        raise errors.InvalidArgument("after_sequence", f"the answer has {len(ends)} deltas")
    events: list[gateway_pb2.ResumeChatResponse] = []
    if with_started:
        events.append(
            gateway_pb2.ResumeChatResponse(
                started=resources_pb2.TurnStarted(
                    conversation_id=answer.conversation_id,
                    user_message_id=answer.user_message_id,
                    assistant_message_id=message.message_id,
                    model=message.model,
                    resumed=True,
                )
            )
        )
    for sequence in range(after + 1, len(ends) + 1):
        start = ends[sequence - 2] if sequence > 1 else 0
        events.append(
            gateway_pb2.ResumeChatResponse(
                delta=resources_pb2.TextDelta(
                    text=text[start : ends[sequence - 1]], sequence=sequence
                )
            )
        )
    events.append(gateway_pb2.ResumeChatResponse(usage=message.usage))
    events.append(
        gateway_pb2.ResumeChatResponse(
            done=resources_pb2.TurnDone(
                finish_reason=message.finish_reason, model=message.model, delta_count=len(ends)
            )
        )
    )
    return events

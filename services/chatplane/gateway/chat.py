"""The Chat flow of the Gateway: reserve the turn (idempotency key), then either run it on the
Agent and relay its events, wait for the copy already running, or replay the stored answer."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import grpc

from chatplane.common import errors
from chatplane.common.context import Principal
from chatplane.common.ids import new_id
from chatplane.common.settings import Settings
from chatplane.gateway.branching import begin_turn, branch_fields, generate_fields
from chatplane.gateway.handoff import HandoffDesk
from chatplane.gateway.token_quota import Admission, TokenQuotaGate
from chatplane.gateway.turn_overlap import HandoffLookahead, admitted
from chatplane.gateway.validation import conversation_title
from chatplane.internal.v1 import agent_pb2, turn_pb2
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_resources_pb2, gateway_pb2, resources_pb2

_log = logging.getLogger(__name__)

# How often a retry polls for the answer of a turn that another call is generating.
_WAIT_POLL_SECONDS = 0.1
GENERATE_METHOD = "/chatplane.internal.v1.AgentService/Generate"
# Metadata naming the conversation on the call to the Agent: in Kubernetes the mesh hashes it
# to pick the Agent replica (istio/base/networking/agent.yaml), so one conversation's turns
# land on one replica (warm caches) without the Agent having to decode the request.
CONVERSATION_ID_HEADER = "x-conversation-id"

# Seconds a downstream call may take: the caller's remaining time less a margin, capped.
Budget = Callable[[float], float]


def agent_events(
    channel: grpc.aio.Channel,
) -> grpc.aio.UnaryStreamMultiCallable[agent_pb2.GenerateRequest, gateway_pb2.ChatResponse]:
    """AgentService.Generate, decoded straight into ChatResponse: GenerateResponse and
    ChatResponse have the same oneof layout by design (a test guards it), so each event is
    parsed once and relayed as is."""
    return channel.unary_stream(
        GENERATE_METHOD,
        request_serializer=agent_pb2.GenerateRequest.SerializeToString,
        response_deserializer=gateway_pb2.ChatResponse.FromString,
    )


class ChatRelay:
    """Runs Chat calls for authenticated principals."""

    def __init__(
        self,
        *,
        settings: Settings,
        persistence: PersistenceClient,
        agent_channel: grpc.aio.Channel,
        quota: TokenQuotaGate | None = None,
        handoff: HandoffDesk | None = None,
    ) -> None:
        self._settings = settings
        self._persistence = persistence
        self._generate = agent_events(agent_channel)
        self._quota = quota
        self._handoff = handoff

    async def chat(
        self,
        principal: Principal,
        request: gateway_pb2.ChatRequest,
        budget: Budget,
        trace: tuple[tuple[str, str], ...] = (),
    ) -> AsyncGenerator[gateway_pb2.ChatResponse]:
        """The events of the turn the request asks for, within the tenant's token quota."""
        if self._quota is None:
            events = self._turn(principal, request, budget, trace)
        else:
            events = self._quota.metered(
                principal.tenant_id,
                request.text,
                budget,
                lambda admission: self._turn(principal, request, budget, trace, admission),
            )
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    async def _turn(
        self,
        principal: Principal,
        request: gateway_pb2.ChatRequest,
        budget: Budget,
        trace: tuple[tuple[str, str], ...] = (),
        admission: Admission | None = None,
    ) -> AsyncGenerator[gateway_pb2.ChatResponse]:
        """The events of the turn the request asks for; `admission` (the turn's quota
        reservation, made by its BeginTurn) is awaited once the turn is begun."""
        settings = self._settings
        owner = admin_resources_pb2.Owner(tenant_id=principal.tenant_id, user_id=principal.user_id)
        begin_request = turn_pb2.BeginTurnRequest(
            owner=owner,
            conversation_id=request.conversation_id,
            client_message_id=request.client_message_id,
            user_message_id=new_id(),
            assistant_message_id=new_id(),
            title=conversation_title(request.text),
            lease_ms=int(settings.turn_timeout_seconds * 1000),
            **branch_fields(request, settings),
        )
        # A continuing conversation's handoff state is read while the turn is begun.
        ahead = HandoffLookahead.start(self._handoff, principal, request, budget)
        if admission is not None and not request.WhichOneof("branch"):
            # Reserved by BeginTurn itself; a regenerate or edit may poll BeginTurn while its
            # message settles, so it reserves once, after it.
            admission.fold_into(begin_request)
        while True:
            begin = await begin_turn(
                self._persistence, begin_request, budget, settings.internal_call_timeout_seconds
            )
            if admission is not None:
                begin_request.ClearField("reserve_quota")  # a takeover does not reserve again
                admission.resolve(begin)
                release = functools.partial(self._release, principal, begin, budget)
                await admitted(admission, begin, release)
                admission = None
            if begin.owner and self._handoff is not None:
                # With a human (or the explicit-request rule fires): no bot answer.
                handoff = await self._handoff.before_turn(
                    principal, request, begin, budget, current=await ahead.state()
                )
                if handoff is not None:
                    yield gateway_pb2.ChatResponse(handoff=handoff)
                    return
            if begin.owner:
                async for event in self._run(principal, request, begin, budget, trace):
                    yield event
                return
            if begin.complete or await self._wait_for_answer(owner, begin, budget):
                async for event in self._replay(owner, begin, budget):
                    yield event
                return
            # The lease of the call generating it ran out: ask again, to take the turn over.

    async def _run(
        self,
        principal: Principal,
        request: gateway_pb2.ChatRequest,
        begin: turn_pb2.BeginTurnResponse,
        budget: Budget,
        trace: tuple[tuple[str, str], ...],
    ) -> AsyncIterator[gateway_pb2.ChatResponse]:
        call = self._generate(
            agent_pb2.GenerateRequest(
                tenant_id=principal.tenant_id,
                user_id=principal.user_id,
                conversation_id=begin.conversation_id,
                user_message_id=begin.user_message_id,
                assistant_message_id=begin.assistant_message_id,
                text=request.text or begin.user_text,
                client_message_id=request.client_message_id,
                resumable=request.resumable,
                variant=request.variant,
                **generate_fields(begin),
            ),
            timeout=budget(self._settings.turn_timeout_seconds),
            metadata=(*trace, (CONVERSATION_ID_HEADER, begin.conversation_id)),
        )
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError:
            # The generation failed before its answer was stored (a stored one is never
            # released): let a retry with the same key run it again at once.
            await self._release(principal, begin, budget)
            raise
        finally:
            # The client went away or the relay failed: stop the generation upstream now.
            call.cancel()

    async def _release(
        self, principal: Principal, begin: turn_pb2.BeginTurnResponse, budget: Budget
    ) -> None:
        owner = admin_resources_pb2.Owner(tenant_id=principal.tenant_id, user_id=principal.user_id)
        try:
            await self._persistence.turns.ReleaseTurn(
                turn_pb2.ReleaseTurnRequest(
                    owner=owner,
                    user_message_id=begin.user_message_id,
                    assistant_message_id=begin.assistant_message_id,
                ),
                timeout=budget(self._settings.internal_call_timeout_seconds),
            )
        except (grpc.aio.AioRpcError, errors.DeadlineExceeded):
            # Best effort: without it the lease simply runs out.
            _log.warning("could not release a failed turn", extra={"turn": begin.user_message_id})

    async def _wait_for_answer(
        self,
        owner: admin_resources_pb2.Owner,
        begin: turn_pb2.BeginTurnResponse,
        budget: Budget,
    ) -> bool:
        """Polls until the turn's answer is stored (True) or its lease expires (False)."""
        request = turn_pb2.GetTurnRequest(
            owner=owner,
            user_message_id=begin.user_message_id,
            assistant_message_id=begin.assistant_message_id,
        )
        timeout = self._settings.internal_call_timeout_seconds
        while True:
            turn = await self._persistence.turns.GetTurn(request, timeout=budget(timeout))
            if turn.HasField("assistant_message"):
                return True
            if turn.lease_expire_time.ToMilliseconds() <= int(time.time() * 1000):
                return False
            budget(_WAIT_POLL_SECONDS)  # raises DeadlineExceeded when the caller's time is up
            await asyncio.sleep(_WAIT_POLL_SECONDS)

    async def _replay(
        self,
        owner: admin_resources_pb2.Owner,
        begin: turn_pb2.BeginTurnResponse,
        budget: Budget,
    ) -> AsyncIterator[gateway_pb2.ChatResponse]:
        turn = await self._persistence.turns.GetTurn(
            turn_pb2.GetTurnRequest(
                owner=owner,
                user_message_id=begin.user_message_id,
                assistant_message_id=begin.assistant_message_id,
            ),
            timeout=budget(self._settings.internal_call_timeout_seconds),
        )
        if not turn.HasField("assistant_message"):
            raise errors.Unavailable("the answer of this turn is not available yet; retry")
        answer = turn.assistant_message
        yield gateway_pb2.ChatResponse(
            started=resources_pb2.TurnStarted(
                conversation_id=begin.conversation_id,
                user_message_id=begin.user_message_id,
                assistant_message_id=begin.assistant_message_id,
                model=answer.model,
                replayed=True,
            )
        )
        if answer.text:
            yield gateway_pb2.ChatResponse(
                delta=resources_pb2.TextDelta(text=answer.text, sequence=1)
            )
        yield gateway_pb2.ChatResponse(usage=answer.usage)
        yield gateway_pb2.ChatResponse(
            done=resources_pb2.TurnDone(
                finish_reason=answer.finish_reason,
                model=answer.model,
                delta_count=1 if answer.text else 0,
            )
        )

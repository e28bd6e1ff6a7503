"""GatewayService's handoff RPCs (docs/handoff.md): RequestHandoff and ReleaseHandoff for the
conversation's owner, WatchConversation (state changes and operator replies, live), and the
thumbs-down rule after SubmitFeedback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractContextManager

from chatplane import audit
from chatplane.audit.outcome import AuditNote, audited
from chatplane.common import errors
from chatplane.common.context import Principal, authenticated_principal
from chatplane.common.deadlines import outbound_timeout
from chatplane.common.ids import is_valid_id
from chatplane.common.settings import Settings
from chatplane.gateway.chat import ChatRelay
from chatplane.gateway.handoff import Budget, HandoffDesk, owner_of, validate_reason
from chatplane.gateway.handoff_fanout import HandoffFanout
from chatplane.gateway.resume import AnswerResume
from chatplane.gateway.servicer import Context, GatewayServicer
from chatplane.internal.v1 import memory_pb2_grpc
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import gateway_pb2, resources_pb2


def _budget(context: Context) -> Budget:
    return lambda cap: outbound_timeout(context, cap)


def _audited(
    action: str, principal: Principal, conversation_id: str, context: Context
) -> AbstractContextManager[AuditNote]:
    """One audit record of the user's handoff call (docs/security.md, "Audit log")."""
    return audited(
        action,
        actor=audit.actor_of(principal),
        tenant_id=principal.tenant_id,
        object=f"conversation/{conversation_id}",
        source=context.peer() or "",
    )


def _conversation_id(value: str) -> str:
    if not value:
        raise errors.InvalidArgument("conversation_id", "required")
    if not is_valid_id(value):
        raise errors.NotFound("conversation not found")
    return value


class HandoffGatewayServicer(GatewayServicer):
    """The public API with human handoff."""

    def __init__(
        self,
        *,
        settings: Settings,
        relay: ChatRelay,
        persistence: PersistenceClient,
        memory: memory_pb2_grpc.MemoryServiceAsyncStub,
        desk: HandoffDesk,
        fanout: HandoffFanout,
        resume: AnswerResume | None = None,
    ) -> None:
        super().__init__(
            settings=settings, relay=relay, persistence=persistence, memory=memory, resume=resume
        )
        self._desk = desk
        self._fanout = fanout

    async def RequestHandoff(
        self, request: gateway_pb2.RequestHandoffRequest, context: Context
    ) -> gateway_pb2.RequestHandoffResponse:
        conversation_id = _conversation_id(request.conversation_id)
        validate_reason(request.reason)
        principal = authenticated_principal()
        with _audited(audit.HANDOFF_REQUEST, principal, conversation_id, context) as note:
            status = await self._desk.change(
                owner_of(principal),
                conversation_id,
                mode=resources_pb2.HANDOFF_MODE_HUMAN,
                trigger=resources_pb2.HANDOFF_TRIGGER_USER,
                actor_id=principal.user_id,
                budget=_budget(context),
                reason=request.reason,
            )
            note.detail = f"changed={str(status.changed).lower()}"
        return gateway_pb2.RequestHandoffResponse(handoff=status)

    async def ReleaseHandoff(
        self, request: gateway_pb2.ReleaseHandoffRequest, context: Context
    ) -> gateway_pb2.ReleaseHandoffResponse:
        conversation_id = _conversation_id(request.conversation_id)
        principal = authenticated_principal()
        with _audited(audit.HANDOFF_RELEASE, principal, conversation_id, context) as note:
            status = await self._desk.change(
                owner_of(principal),
                conversation_id,
                mode=resources_pb2.HANDOFF_MODE_BOT,
                trigger=resources_pb2.HANDOFF_TRIGGER_USER,
                actor_id=principal.user_id,
                budget=_budget(context),
            )
            note.detail = f"changed={str(status.changed).lower()}"
        return gateway_pb2.ReleaseHandoffResponse(handoff=status)

    async def WatchConversation(
        self, request: gateway_pb2.WatchConversationRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.WatchConversationResponse]:
        conversation_id = _conversation_id(request.conversation_id)
        principal = authenticated_principal()
        owner = owner_of(principal)
        # Watch first, then read the state: nothing that happens in between is missed.
        with self._fanout.watch(conversation_id) as events:
            state = await self._desk.state(owner, conversation_id, _budget(context))
            yield gateway_pb2.WatchConversationResponse(handoff=state)
            while (event := await events.get()) is not None:
                if (event.tenant_id, event.user_id) != (owner.tenant_id, owner.user_id):
                    continue
                kind = event.WhichOneof("event")
                if kind == "operator_reply":
                    yield gateway_pb2.WatchConversationResponse(operator_reply=event.operator_reply)
                elif kind == "requested":
                    yield gateway_pb2.WatchConversationResponse(handoff=event.requested)
                elif kind == "released":
                    yield gateway_pb2.WatchConversationResponse(handoff=event.released)
        # The replica is stopping or the client fell far behind: it reconnects and reads
        # the state again.
        raise errors.Unavailable("the watch ended; reconnect to continue")

    async def SubmitFeedback(
        self, request: gateway_pb2.SubmitFeedbackRequest, context: Context
    ) -> gateway_pb2.SubmitFeedbackResponse:
        response = await super().SubmitFeedback(request, context)
        if request.rating == gateway_pb2.RATING_THUMBS_DOWN:
            handoff = await self._desk.after_feedback(
                authenticated_principal(), request.message_id, _budget(context)
            )
            if handoff is not None:
                response.handoff.CopyFrom(handoff)
        return response

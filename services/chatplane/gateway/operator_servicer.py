"""OperatorService (docs/handoff.md): support staff list their tenant's conversations waiting
for a human, read one, reply in it and give it back to the bot. Every call needs the
`operator` role; another tenant's conversation is NOT_FOUND."""

from __future__ import annotations

from collections.abc import Awaitable
from contextlib import AbstractContextManager
from typing import TypeVar

import grpc

from chatplane import audit
from chatplane.audit.outcome import AuditNote, audited
from chatplane.common import errors
from chatplane.common.context import Principal
from chatplane.common.deadlines import outbound_timeout
from chatplane.common.ids import is_valid_id
from chatplane.common.roles import OPERATOR
from chatplane.common.settings import Settings
from chatplane.gateway.admin.caller import principal_with_role
from chatplane.gateway.handoff import Budget, HandoffDesk
from chatplane.gateway.servicer import Context
from chatplane.internal.v1 import conversation_pb2, handoff_pb2
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import gateway_pb2, operator_pb2, operator_pb2_grpc, resources_pb2

_T = TypeVar("_T")

WAITING_PAGE = (20, 100)
MESSAGES_PAGE = (100, 500)


def _operator(context: Context, rpc: str) -> Principal:
    """The caller, who must hold `operator` (a refusal is audited as `authz.denied`)."""
    return principal_with_role(context, OPERATOR, f"OperatorService.{rpc}")


def _audited(
    action: str, operator: Principal, object: str, context: Context
) -> AbstractContextManager[AuditNote]:
    """One audit record of this operator call (docs/security.md, "Audit log")."""
    return audited(
        action,
        actor=audit.actor_of(operator),
        tenant_id=operator.tenant_id,
        object=object,
        source=context.peer() or "",
    )


def _budget(context: Context) -> Budget:
    return lambda cap: outbound_timeout(context, cap)


def _conversation_id(value: str) -> str:
    if not value:
        raise errors.InvalidArgument("conversation_id", "required")
    if not is_valid_id(value):
        raise errors.NotFound("conversation not found")
    return value


def _page_size(value: int, bounds: tuple[int, int]) -> int:
    default, maximum = bounds
    if value == 0:
        return default
    if not 1 <= value <= maximum:
        raise errors.InvalidArgument(
            "page_size", f"must be between 1 and {maximum} (0 means {default})"
        )
    return value


def validate_reply(text: str, max_message_bytes: int) -> None:
    """An operator's reply follows the rules of a user's message."""
    if not text.strip():
        raise errors.InvalidArgument("text", "must not be empty or whitespace")
    size = len(text.encode("utf-8"))
    if size > max_message_bytes:
        raise errors.InvalidArgument(
            "text", f"is {size} bytes; the limit is {max_message_bytes} bytes"
        )
    if "\x00" in text:
        raise errors.InvalidArgument("text", "must not contain NUL characters")


async def _paged(call: Awaitable[_T]) -> _T:
    """A paged read from Persistence, whose only INVALID_ARGUMENT left (the page size
    is checked here) is the caller's page token; it would otherwise pass on as UNAVAILABLE."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            raise errors.InvalidArgument("page_token", "not a page token of this list") from error
        raise


class OperatorServicer(operator_pb2_grpc.OperatorServiceServicer):
    """OperatorService over the handoff desk and Persistence."""

    def __init__(
        self,
        *,
        settings: Settings,
        desk: HandoffDesk,
        persistence: PersistenceClient,
    ) -> None:
        self._settings = settings
        self._desk = desk
        self._persistence = persistence

    async def ListWaitingConversations(
        self, request: operator_pb2.ListWaitingConversationsRequest, context: Context
    ) -> operator_pb2.ListWaitingConversationsResponse:
        operator = _operator(context, "ListWaitingConversations")
        page_size = _page_size(request.page_size, WAITING_PAGE)
        with _audited(audit.OPERATOR_READ, operator, "handoff_queue", context) as note:
            response = await _paged(
                self._persistence.handoff.ListHandoffs(
                    handoff_pb2.ListHandoffsRequest(
                        tenant_id=operator.tenant_id,
                        page_size=page_size,
                        page_token=request.page_token,
                    ),
                    timeout=_budget(context)(self._settings.internal_call_timeout_seconds),
                )
            )
            note.detail = f"conversations={len(response.handoffs)}"
        return operator_pb2.ListWaitingConversationsResponse(
            handoffs=response.handoffs, next_page_token=response.next_page_token
        )

    async def GetHandedOffConversation(
        self, request: operator_pb2.GetHandedOffConversationRequest, context: Context
    ) -> operator_pb2.GetHandedOffConversationResponse:
        operator = _operator(context, "GetHandedOffConversation")
        conversation_id = _conversation_id(request.conversation_id)
        page_size = _page_size(request.page_size, MESSAGES_PAGE)
        target = f"conversation/{conversation_id}"
        with _audited(audit.OPERATOR_READ, operator, target, context) as note:
            return await self._read(operator, conversation_id, page_size, request, context, note)

    async def _read(
        self,
        operator: Principal,
        conversation_id: str,
        page_size: int,
        request: operator_pb2.GetHandedOffConversationRequest,
        context: Context,
        note: AuditNote,
    ) -> operator_pb2.GetHandedOffConversationResponse:
        budget = _budget(context)
        handoff = await self._desk.tenant_handoff(operator, conversation_id, budget)
        note.object = f"conversation/{conversation_id} of user/{handoff.owner.user_id}"
        history = await _paged(
            self._persistence.conversations.GetConversation(
                conversation_pb2.GetConversationRequest(
                    owner=handoff.owner,
                    request=gateway_pb2.GetConversationRequest(
                        conversation_id=conversation_id,
                        page_size=page_size,
                        page_token=request.page_token,
                    ),
                ),
                timeout=budget(self._settings.internal_call_timeout_seconds),
            )
        )
        note.detail = f"messages={len(history.response.messages)}"
        return operator_pb2.GetHandedOffConversationResponse(
            handoff=handoff.handoff,
            conversation=history.response.conversation,
            messages=history.response.messages,
            next_page_token=history.response.next_page_token,
        )

    async def PostReply(
        self, request: operator_pb2.PostReplyRequest, context: Context
    ) -> operator_pb2.PostReplyResponse:
        operator = _operator(context, "PostReply")
        conversation_id = _conversation_id(request.conversation_id)
        validate_reply(request.text, self._settings.max_message_bytes)
        target = f"conversation/{conversation_id}"
        with _audited(audit.HANDOFF_REPLY, operator, target, context) as note:
            message = await self._desk.post_reply(
                operator, conversation_id, request.text, _budget(context)
            )
            note.detail = f"message={message.message_id}"
        return operator_pb2.PostReplyResponse(message=message)

    async def ReleaseConversation(
        self, request: operator_pb2.ReleaseConversationRequest, context: Context
    ) -> operator_pb2.ReleaseConversationResponse:
        operator = _operator(context, "ReleaseConversation")
        conversation_id = _conversation_id(request.conversation_id)
        budget = _budget(context)
        target = f"conversation/{conversation_id}"
        with _audited(audit.HANDOFF_RELEASE, operator, target, context) as note:
            handoff = await self._desk.tenant_handoff(operator, conversation_id, budget)
            status = await self._desk.change(
                handoff.owner,
                conversation_id,
                mode=resources_pb2.HANDOFF_MODE_BOT,
                trigger=resources_pb2.HANDOFF_TRIGGER_OPERATOR,
                actor_id=operator.user_id,
                budget=budget,
            )
            note.detail = f"changed={str(status.changed).lower()}"
        status.user_id = handoff.owner.user_id
        return operator_pb2.ReleaseConversationResponse(handoff=status)

"""HandoffService (docs/handoff.md): a conversation's mode, the tenant's
waiting conversations for operators, and the thumbs-down count the handoff rule reads."""

from __future__ import annotations

from chatplane.common import errors
from chatplane.common.timestamps import optional_timestamp_of
from chatplane.internal.v1 import handoff_pb2, handoff_pb2_grpc
from chatplane.persistence.protos import (
    CONVERSATIONS_PAGE,
    Context,
    at_most,
    owner,
    owner_proto,
    page_size,
    position_cursor,
    position_token,
    require,
)
from chatplane.persistence.store.handoff import (
    HandoffChange,
    HandoffCursor,
    HandoffMode,
    Handoffs,
    HandoffState,
    HandoffTrigger,
)
from chatplane.v1 import resources_pb2

_MODES = {
    HandoffMode.BOT: resources_pb2.HANDOFF_MODE_BOT,
    HandoffMode.HUMAN: resources_pb2.HANDOFF_MODE_HUMAN,
}
_TRIGGERS = {
    None: resources_pb2.HANDOFF_TRIGGER_UNSPECIFIED,
    HandoffTrigger.USER: resources_pb2.HANDOFF_TRIGGER_USER,
    HandoffTrigger.EXPLICIT_REQUEST: resources_pb2.HANDOFF_TRIGGER_EXPLICIT_REQUEST,
    HandoffTrigger.THUMBS_DOWN: resources_pb2.HANDOFF_TRIGGER_THUMBS_DOWN,
    HandoffTrigger.OPERATOR: resources_pb2.HANDOFF_TRIGGER_OPERATOR,
}
_MODES_IN = {proto: mode for mode, proto in _MODES.items()}
_TRIGGERS_IN = {proto: trigger for trigger, proto in _TRIGGERS.items()}
_MAX_REASON_CHARS = 1024


def handoff_status(state: HandoffState) -> resources_pb2.HandoffStatus:
    """A handoff state as the contracts carry it."""
    return resources_pb2.HandoffStatus(
        conversation_id=state.conversation_id,
        mode=_MODES[state.mode],
        trigger=_TRIGGERS[state.trigger],
        reason=state.reason,
        changed=state.changed,
        user_id=state.owner.user_id,
        released_by=state.released_by,
        request_time=optional_timestamp_of(state.request_time),
        release_time=optional_timestamp_of(state.release_time),
    )


class HandoffServicer(handoff_pb2_grpc.HandoffServiceServicer):
    """HandoffService over the store's handoffs."""

    def __init__(self, handoffs: Handoffs) -> None:
        self._handoffs = handoffs

    async def GetHandoff(
        self, request: handoff_pb2.GetHandoffRequest, context: Context
    ) -> handoff_pb2.GetHandoffResponse:
        conversation_owner = owner(request.owner)
        require(request.conversation_id, "conversation_id")
        state = await self._handoffs.get(conversation_owner, request.conversation_id)
        return handoff_pb2.GetHandoffResponse(
            handoff=handoff_status(state), rules_fired=sorted(state.rules_fired)
        )

    async def ChangeHandoff(
        self, request: handoff_pb2.ChangeHandoffRequest, context: Context
    ) -> handoff_pb2.ChangeHandoffResponse:
        conversation_owner = owner(request.owner)
        require(request.conversation_id, "conversation_id")
        mode = _MODES_IN.get(request.mode)
        if mode is None:
            raise errors.InvalidArgument("mode", "must be HANDOFF_MODE_BOT or HANDOFF_MODE_HUMAN")
        trigger = _TRIGGERS_IN.get(request.trigger)
        if trigger is None:
            raise errors.InvalidArgument("trigger", "must be set")
        require(request.actor_id, "actor_id")
        at_most(request.reason, "reason", _MAX_REASON_CHARS)
        change = HandoffChange(mode, trigger, request.actor_id, request.reason, request.rule)
        state = await self._handoffs.change(conversation_owner, request.conversation_id, change)
        return handoff_pb2.ChangeHandoffResponse(handoff=handoff_status(state))

    async def ListHandoffs(
        self, request: handoff_pb2.ListHandoffsRequest, context: Context
    ) -> handoff_pb2.ListHandoffsResponse:
        require(request.tenant_id, "tenant_id")
        limit = page_size(request.page_size, "page_size", CONVERSATIONS_PAGE)
        after = position_cursor(request.page_token, "page_token", "h", HandoffCursor)
        page = await self._handoffs.waiting(request.tenant_id, limit=limit, after=after)
        return handoff_pb2.ListHandoffsResponse(
            handoffs=[handoff_status(state) for state in page.handoffs],
            next_page_token=position_token("h", page.next_cursor),
        )

    async def GetTenantHandoff(
        self, request: handoff_pb2.GetTenantHandoffRequest, context: Context
    ) -> handoff_pb2.GetTenantHandoffResponse:
        require(request.tenant_id, "tenant_id")
        require(request.conversation_id, "conversation_id")
        state = await self._handoffs.of_tenant(request.tenant_id, request.conversation_id)
        return handoff_pb2.GetTenantHandoffResponse(
            owner=owner_proto(state.owner),
            handoff=handoff_status(state),
        )

    async def CountThumbsDown(
        self, request: handoff_pb2.CountThumbsDownRequest, context: Context
    ) -> handoff_pb2.CountThumbsDownResponse:
        conversation_owner = owner(request.owner)
        require(request.message_id, "message_id")
        conversation_id, count = await self._handoffs.count_thumbs_down(
            conversation_owner, request.message_id
        )
        return handoff_pb2.CountThumbsDownResponse(
            conversation_id=conversation_id, thumbs_down=count
        )

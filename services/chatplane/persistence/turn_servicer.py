"""TurnService: reserves a turn's message ids under a lease (with its token reservation in the
same call when asked), reads the turn and its stored answer back, releases the lease of a
turn that failed, and reads the recent messages a turn's prompt follows."""

from __future__ import annotations

import logging
from datetime import timedelta

from chatplane.common import errors
from chatplane.common.timestamps import timestamp_of
from chatplane.internal.v1 import quota_pb2, turn_pb2, turn_pb2_grpc
from chatplane.persistence.protos import (
    Context,
    at_most,
    message_proto,
    owner,
    require,
    require_id,
)
from chatplane.persistence.quota_servicer import QuotaServicer
from chatplane.persistence.recent_messages import BatchWait, recent_messages
from chatplane.persistence.store.base import ConversationStore, TurnRequest
from chatplane.persistence.tree_messages import add_branch, branch_request

_log = logging.getLogger(__name__)

# A BeginTurn without lease_ms gets as long as a turn may take by default.
DEFAULT_LEASE = timedelta(minutes=5)
# Longer than any turn can run: a lease beyond it would block retries for nothing.
MAX_LEASE = timedelta(hours=1)
# The most recent messages one GetRecentMessages returns, and the longest it waits.
MAX_RECENT_MESSAGES = 500
MAX_RECENT_WAIT_MS = 60_000


class TurnServicer(turn_pb2_grpc.TurnServiceServicer):
    """TurnService over the store; `quota` makes the reservation a BeginTurn may carry;
    `stored` wakes a GetRecentMessages waiting for a turn's messages."""

    def __init__(self, store: ConversationStore, quota: QuotaServicer, stored: BatchWait) -> None:
        self._store = store
        self._quota = quota
        self._stored = stored

    async def BeginTurn(
        self, request: turn_pb2.BeginTurnRequest, context: Context
    ) -> turn_pb2.BeginTurnResponse:
        if request.HasField("reserve_quota"):
            return await self._begin_with_reservation(request, context)
        turn_owner = owner(request.owner)
        require_id(request.user_message_id, "user_message_id")
        require_id(request.assistant_message_id, "assistant_message_id")
        if request.assistant_message_id == request.user_message_id:
            raise errors.InvalidArgument("assistant_message_id", "must differ from user_message_id")
        at_most(request.client_message_id, "client_message_id")
        if not 0 <= request.lease_ms <= MAX_LEASE // timedelta(milliseconds=1):
            raise errors.InvalidArgument("lease_ms", f"must be between 0 and {MAX_LEASE}")
        lease = timedelta(milliseconds=request.lease_ms) if request.lease_ms else DEFAULT_LEASE
        reservation = await self._store.begin_turn(
            TurnRequest(
                owner=turn_owner,
                conversation_id=request.conversation_id,
                client_message_id=request.client_message_id,
                user_message_id=request.user_message_id,
                assistant_message_id=request.assistant_message_id,
                title=request.title,
                lease=lease,
                **branch_request(request),
            )
        )
        response = turn_pb2.BeginTurnResponse(
            conversation_id=reservation.conversation_id,
            user_message_id=reservation.user_message_id,
            assistant_message_id=reservation.assistant_message_id,
            owner=reservation.acquired,
            complete=reservation.complete,
        )
        add_branch(response, reservation)
        return response

    async def _begin_with_reservation(
        self, request: turn_pb2.BeginTurnRequest, context: Context
    ) -> turn_pb2.BeginTurnResponse:
        """BeginTurn with the turn's token reservation in the same call: the Gateway's first
        token then waits for one Persistence round trip instead of two (docs/chain-latency.md).
        The reservation is made first; refused, nothing is begun (a new conversation is not
        created); granted, the turn is begun as without it, and a turn that then fails to
        begin gives its reservation back. `quota` in the response is the reservation's
        outcome."""
        reservation = request.reserve_quota
        if reservation.tenant_id != request.owner.tenant_id:
            raise errors.InvalidArgument("reserve_quota.tenant_id", "must be the owner's tenant")
        reserved = await self._quota.ReserveQuota(reservation, context)
        if not reserved.granted:
            return turn_pb2.BeginTurnResponse(quota=reserved)
        plain = turn_pb2.BeginTurnRequest()
        plain.CopyFrom(request)
        plain.ClearField("reserve_quota")
        try:
            response = await self.BeginTurn(plain, context)
        except Exception:
            try:
                await self._quota.SettleQuota(
                    quota_pb2.SettleQuotaRequest(
                        tenant_id=reservation.tenant_id, reservation_id=reservation.reservation_id
                    ),
                    context,
                )
            except Exception:
                # Best effort: the reservation then ends with its lease.
                _log.warning("could not give back the reservation of a turn that failed to begin")
            raise
        response.quota.CopyFrom(reserved)
        return response

    async def GetTurn(
        self, request: turn_pb2.GetTurnRequest, context: Context
    ) -> turn_pb2.GetTurnResponse:
        turn_owner = owner(request.owner)
        if not request.assistant_message_id:
            require(request.user_message_id, "user_message_id")
        turn = await self._store.get_turn(
            turn_owner, request.user_message_id, assistant_message_id=request.assistant_message_id
        )
        response = turn_pb2.GetTurnResponse(lease_expire_time=timestamp_of(turn.lease_expire_time))
        if turn.user_message is not None:
            response.user_message.CopyFrom(message_proto(turn.user_message))
        if turn.assistant_message is not None:
            response.assistant_message.CopyFrom(message_proto(turn.assistant_message))
        return response

    async def ReleaseTurn(
        self, request: turn_pb2.ReleaseTurnRequest, context: Context
    ) -> turn_pb2.ReleaseTurnResponse:
        turn_owner = owner(request.owner)
        if not request.assistant_message_id:
            require(request.user_message_id, "user_message_id")
        released = await self._store.release_turn(
            turn_owner, request.user_message_id, assistant_message_id=request.assistant_message_id
        )
        return turn_pb2.ReleaseTurnResponse(released=released)

    async def GetAnswer(
        self, request: turn_pb2.GetAnswerRequest, context: Context
    ) -> turn_pb2.GetAnswerResponse:
        turn_owner = owner(request.owner)
        require(request.assistant_message_id, "assistant_message_id")
        answer = await self._store.get_answer(turn_owner, request.assistant_message_id)
        response = turn_pb2.GetAnswerResponse(
            conversation_id=answer.turn.conversation_id,
            user_message_id=answer.turn.user_message_id,
            delta_ends=answer.delta_ends,
            lease_expire_time=timestamp_of(answer.turn.lease_expire_time),
        )
        if answer.turn.assistant_message is not None:
            response.assistant_message.CopyFrom(message_proto(answer.turn.assistant_message))
        return response

    async def GetRecentMessages(
        self, request: turn_pb2.GetRecentMessagesRequest, context: Context
    ) -> turn_pb2.GetRecentMessagesResponse:
        branch_owner = owner(request.owner)
        require_id(request.conversation_id, "conversation_id")
        require_id(request.leaf_message_id, "leaf_message_id")
        if not 1 <= request.limit <= MAX_RECENT_MESSAGES:
            raise errors.InvalidArgument("limit", f"must be between 1 and {MAX_RECENT_MESSAGES}")
        if not 0 <= request.wait_ms <= MAX_RECENT_WAIT_MS:
            raise errors.InvalidArgument("wait_ms", f"must be between 0 and {MAX_RECENT_WAIT_MS}")
        wait = request.wait_ms / 1000
        remaining = context.time_remaining()
        if remaining is not None:
            # Answer within the caller's deadline, with what is stored by then.
            wait = max(0.0, min(wait, remaining - 0.5))
        recent = await recent_messages(
            self._store.trees,
            self._stored,
            branch_owner,
            request.conversation_id,
            request.leaf_message_id,
            limit=request.limit,
            wait_seconds=wait,
        )
        return turn_pb2.GetRecentMessagesResponse(
            messages=[message_proto(m) for m in recent.messages],
            incomplete=recent.incomplete,
        )

"""The PersistenceService gRPC servicer: validates request shapes, translates proto ⇄ domain
and calls the `ConversationStore`; errors are domain exceptions, mapped by the interceptor."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc

from chatplane.common import errors
from chatplane.common.feedback_score import feedback_score
from chatplane.common.roles import parse_roles
from chatplane.common.timestamps import timestamp_of
from chatplane.persistence.identity_servicer import IdentityRpcs, api_key_info, audit_actor
from chatplane.persistence.paging import (
    decode_token,
    encode_token,
    page_size,
    token_id,
    token_int,
    token_time,
)
from chatplane.persistence.protos import (
    MAX_KEY_CHARS,
    conversation_proto,
    message_proto,
    owner_of,
    require,
    require_id,
)
from chatplane.persistence.quota_rpcs import QuotaRpcs
from chatplane.persistence.registry_rpcs import RegistryRpcs
from chatplane.persistence.store.base import (
    BranchCursor,
    ConversationCursor,
    ConversationStore,
    ConversationView,
    Feedback,
    MessageCursor,
    Rating,
    TurnRequest,
    to_micros,
)
from chatplane.persistence.tree_messages import (
    add_branch,
    branch_cursor,
    branch_request,
    branch_token,
    conversation_view,
    placed_message,
)
from chatplane.persistence.turn_reservation import begin_with_reservation
from chatplane.persistence.variant_report import report_variants
from chatplane.v1 import (
    gateway_pb2,
    persistence_pb2,
    persistence_pb2_grpc,
)

Context = grpc.aio.ServicerContext[Any, Any]

SERVICE_NAME = persistence_pb2.DESCRIPTOR.services_by_name["PersistenceService"].full_name

# Page sizes as documented on the public API's requests (gateway.proto).
CONVERSATIONS_PAGE = (20, 100)
MESSAGES_PAGE = (100, 500)
# A BeginTurn without lease_ms gets as long as a turn may take by default.
DEFAULT_LEASE = timedelta(minutes=5)
# Longer than any turn can run: a lease beyond it would block retries for nothing.
MAX_LEASE = timedelta(hours=1)
_RATINGS = {
    gateway_pb2.RATING_THUMBS_UP: Rating.THUMBS_UP,
    gateway_pb2.RATING_THUMBS_DOWN: Rating.THUMBS_DOWN,
}


class PersistenceServicer(
    QuotaRpcs, IdentityRpcs, RegistryRpcs, persistence_pb2_grpc.PersistenceServiceServicer
):
    """PersistenceService on top of a `ConversationStore`."""

    def __init__(self, store: ConversationStore) -> None:
        self._store = store

    async def BeginTurn(
        self, request: persistence_pb2.BeginTurnRequest, context: Context
    ) -> persistence_pb2.BeginTurnResponse:
        if request.HasField("reserve_quota"):  # reserve, then begin (turn_reservation.py)
            return await begin_with_reservation(
                request,
                context,
                begin=self.BeginTurn,
                reserve=self.ReserveQuota,
                settle=self.SettleQuota,
            )
        owner = owner_of(request.owner)
        require_id(request.user_message_id, "user_message_id")
        require_id(request.assistant_message_id, "assistant_message_id")
        if request.assistant_message_id == request.user_message_id:
            raise errors.InvalidArgument("assistant_message_id", "must differ from user_message_id")
        if len(request.client_message_id) > MAX_KEY_CHARS:
            raise errors.InvalidArgument(
                "client_message_id", f"must be at most {MAX_KEY_CHARS} characters"
            )
        if not 0 <= request.lease_ms <= MAX_LEASE // timedelta(milliseconds=1):
            raise errors.InvalidArgument("lease_ms", f"must be between 0 and {MAX_LEASE}")
        lease = timedelta(milliseconds=request.lease_ms) if request.lease_ms else DEFAULT_LEASE
        reservation = await self._store.begin_turn(
            TurnRequest(
                owner=owner,
                conversation_id=request.conversation_id,
                client_message_id=request.client_message_id,
                user_message_id=request.user_message_id,
                assistant_message_id=request.assistant_message_id,
                title=request.title,
                lease=lease,
                **branch_request(request),
            )
        )
        response = persistence_pb2.BeginTurnResponse(
            conversation_id=reservation.conversation_id,
            user_message_id=reservation.user_message_id,
            assistant_message_id=reservation.assistant_message_id,
            owner=reservation.acquired,
            complete=reservation.complete,
        )
        add_branch(response, reservation)
        return response

    async def GetTurn(
        self, request: persistence_pb2.GetTurnRequest, context: Context
    ) -> persistence_pb2.GetTurnResponse:
        owner = owner_of(request.owner)
        if not request.assistant_message_id:
            require(request.user_message_id, "user_message_id")
        turn = await self._store.get_turn(
            owner, request.user_message_id, assistant_message_id=request.assistant_message_id
        )
        response = persistence_pb2.GetTurnResponse(
            lease_expire_time=timestamp_of(turn.lease_expire_time)
        )
        if turn.user_message is not None:
            response.user_message.CopyFrom(message_proto(turn.user_message))
        if turn.assistant_message is not None:
            response.assistant_message.CopyFrom(message_proto(turn.assistant_message))
        return response

    async def ReleaseTurn(
        self, request: persistence_pb2.ReleaseTurnRequest, context: Context
    ) -> persistence_pb2.ReleaseTurnResponse:
        owner = owner_of(request.owner)
        if not request.assistant_message_id:
            require(request.user_message_id, "user_message_id")
        released = await self._store.release_turn(
            owner, request.user_message_id, assistant_message_id=request.assistant_message_id
        )
        return persistence_pb2.ReleaseTurnResponse(released=released)

    async def ListConversations(
        self, request: persistence_pb2.PersistenceServiceListConversationsRequest, context: Context
    ) -> persistence_pb2.PersistenceServiceListConversationsResponse:
        owner = owner_of(request.owner)
        limit = page_size(request.page.page_size, "page.page_size", CONVERSATIONS_PAGE)
        after = _conversation_cursor(request.page.page_token, "page.page_token")
        page = await self._store.list_conversations(owner, limit=limit, after=after)
        return persistence_pb2.PersistenceServiceListConversationsResponse(
            page=gateway_pb2.ListConversationsResponse(
                conversations=[conversation_proto(c) for c in page.conversations],
                next_page_token=_conversation_token(page.next_cursor),
            )
        )

    async def GetConversation(
        self, request: persistence_pb2.PersistenceServiceGetConversationRequest, context: Context
    ) -> persistence_pb2.PersistenceServiceGetConversationResponse:
        owner = owner_of(request.owner)
        wanted = request.request
        require(wanted.conversation_id, "request.conversation_id")
        limit = page_size(wanted.page_size, "request.page_size", MESSAGES_PAGE)
        view = conversation_view(wanted.view)
        after: MessageCursor | BranchCursor | None
        if view is ConversationView.TREE:
            after = _message_cursor(wanted.page_token, "request.page_token", wanted.conversation_id)
        else:
            after = branch_cursor(wanted.page_token, "request.page_token", wanted.conversation_id)
        page = await self._store.get_conversation_tree(
            owner, wanted.conversation_id, view=view, limit=limit, after=after
        )
        next_page_token = (
            branch_token(page.next_cursor)
            if isinstance(page.next_cursor, BranchCursor)
            else _message_token(page.next_cursor)
        )
        return persistence_pb2.PersistenceServiceGetConversationResponse(
            response=gateway_pb2.GetConversationResponse(
                conversation=conversation_proto(page.conversation),
                messages=[placed_message(message_proto(p.message), p) for p in page.messages],
                next_page_token=next_page_token,
            )
        )

    async def DeleteConversation(
        self, request: persistence_pb2.PersistenceServiceDeleteConversationRequest, context: Context
    ) -> persistence_pb2.PersistenceServiceDeleteConversationResponse:
        owner = owner_of(request.owner)
        require(request.conversation_id, "conversation_id")
        deleted = await self._store.delete_conversation(owner, request.conversation_id)
        return persistence_pb2.PersistenceServiceDeleteConversationResponse(
            delete_time=timestamp_of(deleted)
        )

    async def SubmitFeedback(
        self, request: persistence_pb2.PersistenceServiceSubmitFeedbackRequest, context: Context
    ) -> persistence_pb2.PersistenceServiceSubmitFeedbackResponse:
        owner = owner_of(request.owner)
        require(request.feedback.message_id, "feedback.message_id")
        rating = _RATINGS.get(request.feedback.rating)
        if rating is None:
            raise errors.InvalidArgument("feedback.rating", "must be thumbs up or thumbs down")
        score = feedback_score(request.feedback, "feedback.score")
        stored = await self._store.submit_feedback(
            owner, Feedback(request.feedback.message_id, rating, request.feedback.comment, score)
        )
        return persistence_pb2.PersistenceServiceSubmitFeedbackResponse(
            create_time=timestamp_of(stored)
        )

    async def SetActiveBranch(
        self, request: persistence_pb2.PersistenceServiceSetActiveBranchRequest, context: Context
    ) -> persistence_pb2.PersistenceServiceSetActiveBranchResponse:
        owner = owner_of(request.owner)
        require(request.request.conversation_id, "request.conversation_id")
        require(request.request.message_id, "request.message_id")
        conversation = await self._store.set_active_branch(
            owner, request.request.conversation_id, request.request.message_id
        )
        return persistence_pb2.PersistenceServiceSetActiveBranchResponse(
            response=gateway_pb2.SetActiveBranchResponse(
                conversation=conversation_proto(conversation)
            )
        )

    async def CreateApiKey(
        self, request: persistence_pb2.CreateApiKeyRequest, context: Context
    ) -> persistence_pb2.CreateApiKeyResponse:
        owner = owner_of(request.owner)
        roles = parse_roles(tuple(request.roles))
        issued = await self._store.create_api_key(
            owner, request.label, roles, audit_actor(request.actor)
        )
        return persistence_pb2.CreateApiKeyResponse(
            api_key=issued.api_key, key_id=issued.record.key_id, key=api_key_info(issued.record)
        )

    async def ReportVariants(
        self, request: persistence_pb2.ReportVariantsRequest, context: Context
    ) -> persistence_pb2.ReportVariantsResponse:
        return await report_variants(self._store, request)

    async def GetApiKey(
        self, request: persistence_pb2.GetApiKeyRequest, context: Context
    ) -> persistence_pb2.GetApiKeyResponse:
        require(request.key_id, "key_id")
        key = await self._store.get_api_key(request.key_id)
        response = persistence_pb2.GetApiKeyResponse(
            owner=persistence_pb2.Owner(tenant_id=key.owner.tenant_id, user_id=key.owner.user_id),
            secret_sha256=key.secret_sha256,
            revoked=key.revoked,
            roles=sorted(key.roles),
        )
        if key.expire_time is not None:  # a rotated key: the Gateway checks it on every call
            response.expire_time.CopyFrom(timestamp_of(key.expire_time))
        return response

    async def GetAnswer(
        self, request: persistence_pb2.GetAnswerRequest, context: Context
    ) -> persistence_pb2.GetAnswerResponse:
        owner = owner_of(request.owner)
        require(request.assistant_message_id, "assistant_message_id")
        answer = await self._store.get_answer(owner, request.assistant_message_id)
        response = persistence_pb2.GetAnswerResponse(
            conversation_id=answer.turn.conversation_id,
            user_message_id=answer.turn.user_message_id,
            delta_ends=answer.delta_ends,
            lease_expire_time=timestamp_of(answer.turn.lease_expire_time),
        )
        if answer.turn.assistant_message is not None:
            response.assistant_message.CopyFrom(message_proto(answer.turn.assistant_message))
        return response


def _conversation_token(cursor: ConversationCursor | None) -> str:
    if cursor is None:
        return ""
    return encode_token(
        {"k": "c", "t": to_micros(cursor.update_time), "id": cursor.conversation_id}
    )


def _conversation_cursor(token: str, field: str) -> ConversationCursor | None:
    if not token:
        return None
    fields = decode_token(token, field, "c")
    return ConversationCursor(token_time(fields, "t", field), token_id(fields, "id", field))


def _message_token(cursor: MessageCursor | None) -> str:
    if cursor is None:
        return ""
    return encode_token(
        {
            "k": "m",
            "c": cursor.conversation_id,
            "t": to_micros(cursor.create_time),
            "p": cursor.position,
        }
    )


def _message_cursor(token: str, field: str, conversation_id: str) -> MessageCursor | None:
    if not token:
        return None
    fields = decode_token(token, field, "m")
    if token_id(fields, "c", field) != conversation_id:
        raise errors.InvalidArgument(field, "a page token of another conversation")
    return MessageCursor(
        conversation_id,
        token_time(fields, "t", field),
        token_int(fields, "p", field),
    )

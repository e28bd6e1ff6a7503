"""The PersistenceService gRPC servicer: validates request shapes, translates proto ⇄ domain
and calls the `ConversationStore`; errors are domain exceptions, mapped by the interceptor."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime, timedelta
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from chatplane.common import errors
from chatplane.common.feedback_score import feedback_score
from chatplane.common.ids import is_valid_id
from chatplane.common.roles import parse_roles
from chatplane.persistence.identity_servicer import IdentityRpcs, api_key_info, audit_actor
from chatplane.persistence.quota_rpcs import QuotaRpcs
from chatplane.persistence.registry_rpcs import RegistryRpcs
from chatplane.persistence.store.base import (
    BranchCursor,
    Conversation,
    ConversationCursor,
    ConversationStore,
    ConversationView,
    Feedback,
    FinishReason,
    Message,
    MessageCursor,
    MessageStatus,
    Owner,
    Rating,
    Role,
    TurnRequest,
    from_micros,
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
    resources_pb2,
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
_MAX_KEY_CHARS = 256

_ROLES = {Role.USER: resources_pb2.ROLE_USER, Role.ASSISTANT: resources_pb2.ROLE_ASSISTANT}
_STATUSES = {
    MessageStatus.COMPLETE: resources_pb2.MESSAGE_STATUS_COMPLETE,
    MessageStatus.INTERRUPTED: resources_pb2.MESSAGE_STATUS_INTERRUPTED,
}
_FINISH_REASONS = {
    FinishReason.UNSPECIFIED: resources_pb2.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: resources_pb2.FINISH_REASON_STOP,
    FinishReason.MAX_TOKENS: resources_pb2.FINISH_REASON_MAX_TOKENS,
    FinishReason.INTERRUPTED: resources_pb2.FINISH_REASON_INTERRUPTED,
    FinishReason.ERROR: resources_pb2.FINISH_REASON_ERROR,
}
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
        owner = _owner(request.owner)
        _require_id(request.user_message_id, "user_message_id")
        _require_id(request.assistant_message_id, "assistant_message_id")
        if request.assistant_message_id == request.user_message_id:
            raise errors.InvalidArgument("assistant_message_id", "must differ from user_message_id")
        if len(request.client_message_id) > _MAX_KEY_CHARS:
            raise errors.InvalidArgument(
                "client_message_id", f"must be at most {_MAX_KEY_CHARS} characters"
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
        owner = _owner(request.owner)
        if not request.assistant_message_id:
            _require(request.user_message_id, "user_message_id")
        turn = await self._store.get_turn(
            owner, request.user_message_id, assistant_message_id=request.assistant_message_id
        )
        response = persistence_pb2.GetTurnResponse(
            lease_expire_time=_timestamp(turn.lease_expire_time)
        )
        if turn.user_message is not None:
            response.user_message.CopyFrom(_message(turn.user_message))
        if turn.assistant_message is not None:
            response.assistant_message.CopyFrom(_message(turn.assistant_message))
        return response

    async def ReleaseTurn(
        self, request: persistence_pb2.ReleaseTurnRequest, context: Context
    ) -> persistence_pb2.ReleaseTurnResponse:
        owner = _owner(request.owner)
        if not request.assistant_message_id:
            _require(request.user_message_id, "user_message_id")
        released = await self._store.release_turn(
            owner, request.user_message_id, assistant_message_id=request.assistant_message_id
        )
        return persistence_pb2.ReleaseTurnResponse(released=released)

    async def ListConversations(
        self, request: persistence_pb2.PersistenceServiceListConversationsRequest, context: Context
    ) -> persistence_pb2.PersistenceServiceListConversationsResponse:
        owner = _owner(request.owner)
        limit = _page_size(request.page.page_size, "page.page_size", CONVERSATIONS_PAGE)
        after = _conversation_cursor(request.page.page_token, "page.page_token")
        page = await self._store.list_conversations(owner, limit=limit, after=after)
        return persistence_pb2.PersistenceServiceListConversationsResponse(
            page=gateway_pb2.ListConversationsResponse(
                conversations=[_conversation(c) for c in page.conversations],
                next_page_token=_conversation_token(page.next_cursor),
            )
        )

    async def GetConversation(
        self, request: persistence_pb2.PersistenceServiceGetConversationRequest, context: Context
    ) -> persistence_pb2.PersistenceServiceGetConversationResponse:
        owner = _owner(request.owner)
        wanted = request.request
        _require(wanted.conversation_id, "request.conversation_id")
        limit = _page_size(wanted.page_size, "request.page_size", MESSAGES_PAGE)
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
                conversation=_conversation(page.conversation),
                messages=[placed_message(_message(p.message), p) for p in page.messages],
                next_page_token=next_page_token,
            )
        )

    async def DeleteConversation(
        self, request: persistence_pb2.PersistenceServiceDeleteConversationRequest, context: Context
    ) -> persistence_pb2.PersistenceServiceDeleteConversationResponse:
        owner = _owner(request.owner)
        _require(request.conversation_id, "conversation_id")
        deleted = await self._store.delete_conversation(owner, request.conversation_id)
        return persistence_pb2.PersistenceServiceDeleteConversationResponse(
            delete_time=_timestamp(deleted)
        )

    async def SubmitFeedback(
        self, request: persistence_pb2.PersistenceServiceSubmitFeedbackRequest, context: Context
    ) -> persistence_pb2.PersistenceServiceSubmitFeedbackResponse:
        owner = _owner(request.owner)
        _require(request.feedback.message_id, "feedback.message_id")
        rating = _RATINGS.get(request.feedback.rating)
        if rating is None:
            raise errors.InvalidArgument("feedback.rating", "must be thumbs up or thumbs down")
        score = feedback_score(request.feedback, "feedback.score")
        stored = await self._store.submit_feedback(
            owner, Feedback(request.feedback.message_id, rating, request.feedback.comment, score)
        )
        return persistence_pb2.PersistenceServiceSubmitFeedbackResponse(
            create_time=_timestamp(stored)
        )

    async def SetActiveBranch(
        self, request: persistence_pb2.PersistenceServiceSetActiveBranchRequest, context: Context
    ) -> persistence_pb2.PersistenceServiceSetActiveBranchResponse:
        owner = _owner(request.owner)
        _require(request.request.conversation_id, "request.conversation_id")
        _require(request.request.message_id, "request.message_id")
        conversation = await self._store.set_active_branch(
            owner, request.request.conversation_id, request.request.message_id
        )
        return persistence_pb2.PersistenceServiceSetActiveBranchResponse(
            response=gateway_pb2.SetActiveBranchResponse(conversation=_conversation(conversation))
        )

    async def CreateApiKey(
        self, request: persistence_pb2.CreateApiKeyRequest, context: Context
    ) -> persistence_pb2.CreateApiKeyResponse:
        owner = _owner(request.owner)
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
        _require(request.key_id, "key_id")
        key = await self._store.get_api_key(request.key_id)
        response = persistence_pb2.GetApiKeyResponse(
            owner=persistence_pb2.Owner(tenant_id=key.owner.tenant_id, user_id=key.owner.user_id),
            secret_sha256=key.secret_sha256,
            revoked=key.revoked,
            roles=sorted(key.roles),
        )
        if key.expire_time is not None:  # a rotated key: the Gateway checks it on every call
            response.expire_time.CopyFrom(_timestamp(key.expire_time))
        return response

    async def GetAnswer(
        self, request: persistence_pb2.GetAnswerRequest, context: Context
    ) -> persistence_pb2.GetAnswerResponse:
        owner = _owner(request.owner)
        _require(request.assistant_message_id, "assistant_message_id")
        answer = await self._store.get_answer(owner, request.assistant_message_id)
        response = persistence_pb2.GetAnswerResponse(
            conversation_id=answer.turn.conversation_id,
            user_message_id=answer.turn.user_message_id,
            delta_ends=answer.delta_ends,
            lease_expire_time=_timestamp(answer.turn.lease_expire_time),
        )
        if answer.turn.assistant_message is not None:
            response.assistant_message.CopyFrom(_message(answer.turn.assistant_message))
        return response


def _require(value: str, field: str) -> None:
    if not value:
        raise errors.InvalidArgument(field, "required")


def _require_id(value: str, field: str) -> None:
    _require(value, field)
    if not is_valid_id(value):
        raise errors.InvalidArgument(field, "must be a UUID in canonical form")


def _owner(owner: persistence_pb2.Owner) -> Owner:
    for field, value in (("owner.tenant_id", owner.tenant_id), ("owner.user_id", owner.user_id)):
        _require(value, field)
        if len(value) > _MAX_KEY_CHARS:
            raise errors.InvalidArgument(field, f"must be at most {_MAX_KEY_CHARS} characters")
    return Owner(owner.tenant_id, owner.user_id)


def _page_size(value: int, field: str, bounds: tuple[int, int]) -> int:
    default, maximum = bounds
    if value == 0:
        return default
    if not 1 <= value <= maximum:
        raise errors.InvalidArgument(field, f"must be between 1 and {maximum} (0 means {default})")
    return value


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _conversation(conversation: Conversation) -> resources_pb2.Conversation:
    return resources_pb2.Conversation(
        conversation_id=conversation.conversation_id,
        title=conversation.title,
        create_time=_timestamp(conversation.create_time),
        update_time=_timestamp(conversation.update_time),
        message_count=conversation.message_count,
        active_message_id=conversation.active_message_id,
    )


def _message(message: Message) -> resources_pb2.Message:
    proto = resources_pb2.Message(
        message_id=message.message_id,
        conversation_id=message.conversation_id,
        role=_ROLES[message.role],
        text=message.text,
        status=_STATUSES[message.status],
        model=message.model,
        create_time=_timestamp(message.create_time),
        reply_to_message_id=message.reply_to_message_id,
        finish_reason=_FINISH_REASONS[message.finish_reason],
        client_message_id=message.client_message_id,
    )
    if message.operator_id:  # an operator's reply (docs/handoff.md)
        proto.role = resources_pb2.ROLE_OPERATOR
        proto.operator_id = message.operator_id
    elif message.role is Role.ASSISTANT:
        proto.usage.input_tokens = message.input_tokens
        proto.usage.output_tokens = message.output_tokens
    if message.parent_message_id is not None:
        proto.parent_message_id = message.parent_message_id
    return proto


# Page tokens: base64url of a small JSON object. They are opaque to clients and carry the
# keyset position only; a token is decoded strictly, and a token of another conversation is
# refused, so a forged one can at worst page through the caller's own objects.


def _encode_token(fields: dict[str, str | int]) -> str:
    text = json.dumps(fields, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode("ascii")


def _decode_token(token: str, field: str, kind: str) -> dict[str, Any]:
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        fields = json.loads(raw)
    except (binascii.Error, ValueError) as error:
        raise errors.InvalidArgument(field, "not a page token of this list") from error
    if not isinstance(fields, dict) or fields.get("k") != kind:
        raise errors.InvalidArgument(field, "not a page token of this list")
    return fields


def _token_int(fields: dict[str, Any], name: str, field: str) -> int:
    value = fields.get(name)
    if type(value) is not int or value < 0:
        raise errors.InvalidArgument(field, "not a page token of this list")
    return value


def _token_time(fields: dict[str, Any], name: str, field: str) -> datetime:
    try:
        return from_micros(_token_int(fields, name, field))
    except OverflowError as error:
        raise errors.InvalidArgument(field, "not a page token of this list") from error


def _token_id(fields: dict[str, Any], name: str, field: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not is_valid_id(value):
        raise errors.InvalidArgument(field, "not a page token of this list")
    return value


def _conversation_token(cursor: ConversationCursor | None) -> str:
    if cursor is None:
        return ""
    return _encode_token(
        {"k": "c", "t": to_micros(cursor.update_time), "id": cursor.conversation_id}
    )


def _conversation_cursor(token: str, field: str) -> ConversationCursor | None:
    if not token:
        return None
    fields = _decode_token(token, field, "c")
    return ConversationCursor(_token_time(fields, "t", field), _token_id(fields, "id", field))


def _message_token(cursor: MessageCursor | None) -> str:
    if cursor is None:
        return ""
    return _encode_token(
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
    fields = _decode_token(token, field, "m")
    if _token_id(fields, "c", field) != conversation_id:
        raise errors.InvalidArgument(field, "a page token of another conversation")
    return MessageCursor(
        conversation_id,
        _token_time(fields, "t", field),
        _token_int(fields, "p", field),
    )

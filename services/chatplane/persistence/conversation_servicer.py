"""ConversationService: a user's conversations as the Gateway's history, feedback and branch
RPCs read and change them (pages of conversations, a conversation's tree or branch, deletion,
feedback, the active branch)."""

from __future__ import annotations

from chatplane.common import errors
from chatplane.common.feedback_score import feedback_score
from chatplane.common.timestamps import timestamp_of
from chatplane.internal.v1 import conversation_pb2, conversation_pb2_grpc
from chatplane.persistence.protos import (
    CONVERSATIONS_PAGE,
    MESSAGES_PAGE,
    RATINGS,
    Context,
    conversation_proto,
    message_cursor,
    message_proto,
    message_token,
    owner,
    page_size,
    position_cursor,
    position_token,
    require,
)
from chatplane.persistence.store.base import (
    BranchCursor,
    ConversationCursor,
    ConversationStore,
    ConversationView,
    Feedback,
    MessageCursor,
)
from chatplane.persistence.tree_messages import (
    branch_cursor,
    branch_token,
    conversation_view,
    placed_message,
)
from chatplane.v1 import gateway_pb2

_RATINGS = {proto: rating for rating, proto in RATINGS.items()}


class ConversationServicer(conversation_pb2_grpc.ConversationServiceServicer):
    """ConversationService over the store."""

    def __init__(self, store: ConversationStore) -> None:
        self._store = store

    async def ListConversations(
        self, request: conversation_pb2.ListConversationsRequest, context: Context
    ) -> conversation_pb2.ListConversationsResponse:
        conversation_owner = owner(request.owner)
        limit = page_size(request.page.page_size, "page.page_size", CONVERSATIONS_PAGE)
        after = position_cursor(request.page.page_token, "page.page_token", "c", ConversationCursor)
        page = await self._store.list_conversations(conversation_owner, limit=limit, after=after)
        return conversation_pb2.ListConversationsResponse(
            page=gateway_pb2.ListConversationsResponse(
                conversations=[conversation_proto(c) for c in page.conversations],
                next_page_token=position_token("c", page.next_cursor),
            )
        )

    async def GetConversation(
        self, request: conversation_pb2.GetConversationRequest, context: Context
    ) -> conversation_pb2.GetConversationResponse:
        conversation_owner = owner(request.owner)
        wanted = request.request
        require(wanted.conversation_id, "request.conversation_id")
        limit = page_size(wanted.page_size, "request.page_size", MESSAGES_PAGE)
        view = conversation_view(wanted.view)
        after: MessageCursor | BranchCursor | None
        if view is ConversationView.TREE:
            after = message_cursor(wanted.page_token, "request.page_token", wanted.conversation_id)
        else:
            after = branch_cursor(wanted.page_token, "request.page_token", wanted.conversation_id)
        page = await self._store.trees.page(
            conversation_owner, wanted.conversation_id, view=view, limit=limit, after=after
        )
        next_page_token = (
            branch_token(page.next_cursor)
            if isinstance(page.next_cursor, BranchCursor)
            else message_token(page.next_cursor)
        )
        return conversation_pb2.GetConversationResponse(
            response=gateway_pb2.GetConversationResponse(
                conversation=conversation_proto(page.conversation),
                messages=[placed_message(message_proto(p.message), p) for p in page.messages],
                next_page_token=next_page_token,
            )
        )

    async def DeleteConversation(
        self, request: conversation_pb2.DeleteConversationRequest, context: Context
    ) -> conversation_pb2.DeleteConversationResponse:
        conversation_owner = owner(request.owner)
        require(request.conversation_id, "conversation_id")
        deleted = await self._store.delete_conversation(conversation_owner, request.conversation_id)
        return conversation_pb2.DeleteConversationResponse(delete_time=timestamp_of(deleted))

    async def SubmitFeedback(
        self, request: conversation_pb2.SubmitFeedbackRequest, context: Context
    ) -> conversation_pb2.SubmitFeedbackResponse:
        rater = owner(request.owner)
        require(request.feedback.message_id, "feedback.message_id")
        rating = _RATINGS.get(request.feedback.rating)
        if rating is None:
            raise errors.InvalidArgument("feedback.rating", "must be thumbs up or thumbs down")
        score = feedback_score(request.feedback, "feedback.score")
        stored = await self._store.submit_feedback(
            rater, Feedback(request.feedback.message_id, rating, request.feedback.comment, score)
        )
        return conversation_pb2.SubmitFeedbackResponse(create_time=timestamp_of(stored))

    async def SetActiveBranch(
        self, request: conversation_pb2.SetActiveBranchRequest, context: Context
    ) -> conversation_pb2.SetActiveBranchResponse:
        conversation_owner = owner(request.owner)
        require(request.request.conversation_id, "request.conversation_id")
        require(request.request.message_id, "request.message_id")
        conversation = await self._store.trees.set_active_branch(
            conversation_owner, request.request.conversation_id, request.request.message_id
        )
        return conversation_pb2.SetActiveBranchResponse(
            response=gateway_pb2.SetActiveBranchResponse(
                conversation=conversation_proto(conversation)
            )
        )

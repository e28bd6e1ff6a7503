"""GatewayService servicer: the public API. Translates requests for the chat relay and the
system of record, always on behalf of the authenticated principal (never of ids in the
request)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from chatplane.common import errors
from chatplane.common.context import authenticated_principal
from chatplane.common.deadlines import outbound_timeout
from chatplane.common.ids import is_valid_id
from chatplane.common.settings import Settings
from chatplane.common.status_mapping import caller_field_errors
from chatplane.common.trace_context import propagated
from chatplane.gateway.branching import validate_view
from chatplane.gateway.chat import ChatRelay
from chatplane.gateway.documents import DocumentRelay
from chatplane.gateway.metrics import ChatStreamMetrics
from chatplane.gateway.registry_servicer import require_pin
from chatplane.gateway.resume import AnswerResume
from chatplane.gateway.validation import validate_chat, validate_feedback
from chatplane.internal.v1 import conversation_pb2, memory_pb2, memory_pb2_grpc
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_resources_pb2, gateway_pb2, gateway_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def _owner() -> admin_resources_pb2.Owner:
    principal = authenticated_principal()
    return admin_resources_pb2.Owner(tenant_id=principal.tenant_id, user_id=principal.user_id)


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """The public API over the chat relay and Persistence."""

    def __init__(
        self,
        *,
        settings: Settings,
        relay: ChatRelay,
        persistence: PersistenceClient,
        memory: memory_pb2_grpc.MemoryServiceAsyncStub,
        resume: AnswerResume | None = None,
    ) -> None:
        self._settings = settings
        self._relay = relay
        self._persistence = persistence
        self._memory = memory
        self._resume = resume
        self._documents = DocumentRelay(memory, settings.document_max_bytes)

    def _timeout(self, context: Context) -> float:
        return outbound_timeout(context, self._settings.internal_call_timeout_seconds)

    async def Chat(
        self, request: gateway_pb2.ChatRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.ChatResponse]:
        validate_chat(request, self._settings.max_message_bytes)
        require_pin(authenticated_principal(), request.variant)
        metrics = ChatStreamMetrics()
        events = self._relay.chat(
            authenticated_principal(),
            request,
            lambda cap: outbound_timeout(context, cap),
            propagated(context.invocation_metadata() or ()),
        )
        try:
            async for event in events:
                metrics.observe(event)
                yield event
        finally:
            await events.aclose()

    async def ListConversations(
        self, request: gateway_pb2.ListConversationsRequest, context: Context
    ) -> gateway_pb2.ListConversationsResponse:
        with caller_field_errors("page."):
            response = await self._persistence.conversations.ListConversations(
                conversation_pb2.ListConversationsRequest(owner=_owner(), page=request),
                timeout=self._timeout(context),
            )
        return response.page

    async def GetConversation(
        self, request: gateway_pb2.GetConversationRequest, context: Context
    ) -> gateway_pb2.GetConversationResponse:
        validate_view(request)
        if request.conversation_id and not is_valid_id(request.conversation_id):
            # Not an id at all: it names nothing of the caller's (docs/api.md).
            raise errors.NotFound("conversation not found")
        with caller_field_errors("request."):
            response = await self._persistence.conversations.GetConversation(
                conversation_pb2.GetConversationRequest(owner=_owner(), request=request),
                timeout=self._timeout(context),
            )
        return response.response

    async def DeleteConversation(
        self, request: gateway_pb2.DeleteConversationRequest, context: Context
    ) -> gateway_pb2.DeleteConversationResponse:
        owner = _owner()
        if request.conversation_id and not is_valid_id(request.conversation_id):
            raise errors.NotFound("conversation not found")
        # Ownership first (a read), then memory, then the record: a failure part-way leaves
        # the conversation listed, so the user can delete it again.
        await self._persistence.conversations.GetConversation(
            conversation_pb2.GetConversationRequest(
                owner=owner,
                request=gateway_pb2.GetConversationRequest(
                    conversation_id=request.conversation_id, page_size=1
                ),
            ),
            timeout=self._timeout(context),
        )
        await self._memory.Forget(
            memory_pb2.ForgetRequest(
                tenant_id=owner.tenant_id,
                user_id=owner.user_id,
                conversation_id=request.conversation_id,
            ),
            timeout=self._timeout(context),
        )
        response = await self._persistence.conversations.DeleteConversation(
            conversation_pb2.DeleteConversationRequest(
                owner=owner, conversation_id=request.conversation_id
            ),
            timeout=self._timeout(context),
        )
        return gateway_pb2.DeleteConversationResponse(delete_time=response.delete_time)

    async def SubmitFeedback(
        self, request: gateway_pb2.SubmitFeedbackRequest, context: Context
    ) -> gateway_pb2.SubmitFeedbackResponse:
        validate_feedback(request, self._settings.max_comment_bytes)
        response = await self._persistence.conversations.SubmitFeedback(
            conversation_pb2.SubmitFeedbackRequest(owner=_owner(), feedback=request),
            timeout=self._timeout(context),
        )
        return gateway_pb2.SubmitFeedbackResponse(create_time=response.create_time)

    async def ResumeChat(
        self, request: gateway_pb2.ResumeChatRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.ResumeChatResponse]:
        if self._resume is None:
            raise errors.Unavailable("resume is not configured")
        events = self._resume.resume(
            authenticated_principal(),
            request,
            lambda cap: outbound_timeout(context, cap),
            propagated(context.invocation_metadata() or ()),
        )
        async for event in events:
            yield event

    async def CancelChat(
        self, request: gateway_pb2.CancelChatRequest, context: Context
    ) -> gateway_pb2.CancelChatResponse:
        if self._resume is None:
            raise errors.Unavailable("resume is not configured")
        return await self._resume.cancel(
            authenticated_principal(),
            request,
            lambda cap: outbound_timeout(context, cap),
            propagated(context.invocation_metadata() or ()),
        )

    async def IngestDocument(
        self,
        request_iterator: AsyncIterator[gateway_pb2.IngestDocumentRequest],
        context: Context,
    ) -> gateway_pb2.IngestDocumentResponse:
        timeout = outbound_timeout(context, self._settings.document_ingest_timeout_seconds)
        return await self._documents.ingest(authenticated_principal(), request_iterator, timeout)

    async def UploadDocument(
        self, request: gateway_pb2.UploadDocumentRequest, context: Context
    ) -> gateway_pb2.UploadDocumentResponse:
        timeout = outbound_timeout(context, self._settings.document_ingest_timeout_seconds)
        return await self._documents.upload(authenticated_principal(), request, timeout)

    async def ListDocuments(
        self, request: gateway_pb2.ListDocumentsRequest, context: Context
    ) -> gateway_pb2.ListDocumentsResponse:
        return await self._documents.documents(authenticated_principal(), self._timeout(context))

    async def GetDocumentChunk(
        self, request: gateway_pb2.GetDocumentChunkRequest, context: Context
    ) -> gateway_pb2.GetDocumentChunkResponse:
        return await self._documents.chunk(
            authenticated_principal(), request, self._timeout(context)
        )

    async def DeleteDocument(
        self, request: gateway_pb2.DeleteDocumentRequest, context: Context
    ) -> gateway_pb2.DeleteDocumentResponse:
        return await self._documents.delete(
            authenticated_principal(), request.document_id, self._timeout(context)
        )

    async def SetActiveBranch(
        self, request: gateway_pb2.SetActiveBranchRequest, context: Context
    ) -> gateway_pb2.SetActiveBranchResponse:
        for field, value in (
            ("conversation_id", request.conversation_id),
            ("message_id", request.message_id),
        ):
            if not value:
                raise errors.InvalidArgument(field, "required")
            if not is_valid_id(value):
                raise errors.NotFound(f"{field.removesuffix('_id')} not found")
        response = await self._persistence.conversations.SetActiveBranch(
            conversation_pb2.SetActiveBranchRequest(owner=_owner(), request=request),
            timeout=self._timeout(context),
        )
        return response.response

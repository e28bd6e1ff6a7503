"""MemoryService servicer: proto ⇄ ConversationalMemory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from chatplane.common import errors
from chatplane.common.timestamps import timestamp_of_ms
from chatplane.internal.v1 import memory_pb2, memory_pb2_grpc
from chatplane.memory.conversational_memory import ConversationalMemory
from chatplane.memory.document_header import validate_header
from chatplane.memory.document_library import DocumentLibrary
from chatplane.memory.index.base import (
    DocumentChunk,
    DocumentSummary,
    ItemKind,
    RecalledItem,
    document_chunk_of,
)
from chatplane.memory.metrics import RECALL_DURATION, REMEMBER_DURATION
from chatplane.memory.remember_request import ROLE_NAMES, remembered_messages
from chatplane.memory.user_memory import list_user_memory
from chatplane.v1 import resources_pb2

_ROLES = {name: role for role, name in ROLE_NAMES.items()}
_SNIPPET_CHARS = 200


def _recalled(found: RecalledItem) -> memory_pb2.RecalledItem:
    item = found.item
    is_document = item.kind is ItemKind.DOCUMENT
    document_id, chunk_index = document_chunk_of(item.item_id) if is_document else ("", 0)
    return memory_pb2.RecalledItem(
        citation=resources_pb2.Citation(
            kind=resources_pb2.CITATION_KIND_DOCUMENT
            if is_document
            else resources_pb2.CITATION_KIND_TURN,
            source_id=item.item_id,
            title=item.source if is_document else "earlier conversation",
            snippet=item.text[:_SNIPPET_CHARS],
            score=found.score,
            document_id=document_id,
            chunk_index=chunk_index,
        ),
        text=item.text,
        conversation_id=item.conversation_id,
        role=_ROLES.get(item.role, resources_pb2.ROLE_UNSPECIFIED),
    )


def document_message(summary: DocumentSummary, mime_type: str = "") -> resources_pb2.Document:
    """A stored document as the API shows it."""
    created = timestamp_of_ms(summary.created_at_ms)
    return resources_pb2.Document(
        document_id=summary.document_id,
        name=summary.name,
        mime_type=mime_type,
        chunk_count=summary.chunk_count,
        create_time=created,
    )


def document_chunk_message(chunk: DocumentChunk) -> resources_pb2.DocumentChunk:
    """A document's chunk as the API shows it."""
    return resources_pb2.DocumentChunk(
        document_id=chunk.document_id,
        document_name=chunk.name,
        chunk_index=chunk.chunk_index,
        chunk_count=chunk.chunk_count,
        text=chunk.text,
    )


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    """MemoryService over ConversationalMemory (and the tenant's DocumentLibrary)."""

    def __init__(
        self, memory: ConversationalMemory, documents: DocumentLibrary | None = None
    ) -> None:
        self._memory = memory
        self._documents = documents

    async def Remember(
        self, request: memory_pb2.RememberRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> memory_pb2.RememberResponse:
        if any(m.role not in ROLE_NAMES for m in request.messages):
            raise errors.InvalidArgument("messages.role", "must be ROLE_USER or ROLE_ASSISTANT")
        with REMEMBER_DURATION.time():
            count = await self._memory.remember(
                request.tenant_id,
                request.user_id,
                request.conversation_id,
                remembered_messages(request),
            )
        return memory_pb2.RememberResponse(remembered_count=count)

    async def Recall(
        self, request: memory_pb2.RecallRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> memory_pb2.RecallResponse:
        with RECALL_DURATION.time():
            recall = await self._memory.recall(
                request.tenant_id,
                request.user_id,
                request.conversation_id,
                request.query,
                request.recent_limit,
                request.top_k,
            )
        return memory_pb2.RecallResponse(
            recent=[
                memory_pb2.MemoryMessage(
                    message_id=item.item_id,
                    role=_ROLES.get(item.role, resources_pb2.ROLE_UNSPECIFIED),
                    text=item.text,
                    create_time_unix_ms=item.created_at_ms,
                )
                for item in recall.recent
            ],
            items=[_recalled(found) for found in recall.relevant],
        )

    async def Forget(
        self, request: memory_pb2.ForgetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> memory_pb2.ForgetResponse:
        count = await self._memory.forget(
            request.tenant_id, request.user_id, request.conversation_id
        )
        return memory_pb2.ForgetResponse(forgotten_count=count)

    async def EraseUserMemory(
        self,
        request: memory_pb2.EraseUserMemoryRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> memory_pb2.EraseUserMemoryResponse:
        count = await self._memory.erase_user(
            request.tenant_id, request.user_id, tuple(request.conversation_ids)
        )
        return memory_pb2.EraseUserMemoryResponse(erased_count=count)

    def _library(self) -> DocumentLibrary:
        if self._documents is None:
            raise errors.FailedPrecondition("document ingestion is not enabled")
        return self._documents

    async def IngestDocument(
        self,
        request_iterator: AsyncIterator[memory_pb2.IngestDocumentRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> memory_pb2.IngestDocumentResponse:
        library = self._library()
        header: memory_pb2.DocumentHeader | None = None
        pieces: list[bytes] = []
        size = 0
        async for part in request_iterator:
            kind = part.WhichOneof("part")
            if header is None:
                if kind != "header":
                    raise errors.InvalidArgument("header", "the first message must be the header")
                header = part.header
                validate_header(header.tenant_id, header.name, header.mime_type)
                continue
            if kind != "content":
                raise errors.InvalidArgument("header", "only the first message may be a header")
            size += len(part.content)
            if size > library.limits.max_bytes:
                # Refused as soon as it is known, without reading the rest.
                raise errors.InvalidArgument(
                    "content", f"is over the limit of {library.limits.max_bytes} bytes"
                )
            pieces.append(part.content)
        if header is None:
            raise errors.InvalidArgument("header", "required")
        summary = await library.ingest(
            header.tenant_id, header.name, header.mime_type, b"".join(pieces)
        )
        return memory_pb2.IngestDocumentResponse(
            document=document_message(summary, header.mime_type)
        )

    async def ListDocuments(
        self, request: memory_pb2.ListDocumentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> memory_pb2.ListDocumentsResponse:
        documents = await self._library().documents(request.tenant_id)
        return memory_pb2.ListDocumentsResponse(documents=[document_message(d) for d in documents])

    async def DeleteDocument(
        self,
        request: memory_pb2.DeleteDocumentRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> memory_pb2.DeleteDocumentResponse:
        deleted = await self._library().delete(request.tenant_id, request.document_id)
        return memory_pb2.DeleteDocumentResponse(deleted_chunk_count=deleted)

    async def GetDocumentChunk(
        self,
        request: memory_pb2.GetDocumentChunkRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> memory_pb2.GetDocumentChunkResponse:
        chunk = await self._library().chunk(
            request.tenant_id, request.document_id, request.chunk_index
        )
        return memory_pb2.GetDocumentChunkResponse(chunk=document_chunk_message(chunk))

    async def ListUserMemory(
        self, request: memory_pb2.ListUserMemoryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> memory_pb2.ListUserMemoryResponse:
        return await list_user_memory(self._memory, request)

"""The Gateway's document RPCs for the caller's tenant: ingestion (streamed, or whole in one
request), listing, reading one chunk (what a citation names) and deletion, forwarded to
MemoryService. The tenant always comes from the principal, never from the request; the header
is checked here so a bad one is refused before any upload is forwarded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from chatplane.common import errors
from chatplane.common.context import Principal
from chatplane.common.ids import is_valid_id
from chatplane.common.status_mapping import field_violations
from chatplane.internal.v1 import memory_pb2, memory_pb2_grpc
from chatplane.memory.chunk_reference import check_chunk_reference
from chatplane.memory.document_header import validate_header
from chatplane.v1 import gateway_pb2

# UploadDocument's bytes go on to Memory in pieces of this size (IngestDocument's limit per
# message is 1 MiB).
UPLOAD_PIECE_BYTES = 1024 * 1024


def _passed_on(error: grpc.aio.AioRpcError) -> Exception:
    """Memory's INVALID_ARGUMENT about the document (unreadable PDF, too many chunks) is the
    caller's: passed on with its field. Anything else keeps the usual downstream mapping."""
    if error.code() is not grpc.StatusCode.INVALID_ARGUMENT:
        return error
    for violation in field_violations(error):
        return errors.InvalidArgument(violation.field, violation.description)
    return errors.InvalidArgument("content", error.details() or "rejected")


class DocumentRelay:
    """Forwards document calls to MemoryService on behalf of a principal."""

    def __init__(self, memory: memory_pb2_grpc.MemoryServiceAsyncStub, max_bytes: int) -> None:
        self._memory = memory
        self._max_bytes = max_bytes

    async def ingest(
        self,
        principal: Principal,
        requests: AsyncIterator[gateway_pb2.IngestDocumentRequest],
        timeout: float,
    ) -> gateway_pb2.IngestDocumentResponse:
        """Streams the upload to MemoryService as it arrives (never whole in memory here)."""
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("part") != "header":
            raise errors.InvalidArgument("header", "the first message must be the header")
        validate_header(principal.tenant_id, first.header.name, first.header.mime_type)
        header = memory_pb2.DocumentHeader(
            tenant_id=principal.tenant_id,
            name=first.header.name,
            mime_type=first.header.mime_type,
        )
        max_bytes = self._max_bytes
        # A bad part ends the upload with the caller's error: the upstream call is cancelled
        # (ending its request stream normally would ingest a truncated document).
        refusal: list[errors.ChatplaneError] = []

        async def parts() -> AsyncIterator[bytes]:
            size = 0
            async for part in requests:
                if part.WhichOneof("part") != "content":
                    raise errors.InvalidArgument("header", "only the first message may be a header")
                size += len(part.content)
                if size > max_bytes:
                    raise errors.InvalidArgument(
                        "content", f"is over the limit of {max_bytes} bytes"
                    )
                yield part.content

        async def forwarded() -> AsyncIterator[memory_pb2.IngestDocumentRequest]:
            yield memory_pb2.IngestDocumentRequest(header=header)
            try:
                async for content in parts():
                    yield memory_pb2.IngestDocumentRequest(content=content)
            except errors.ChatplaneError as error:
                # Also an undecodable message (the interceptor's check while reading).
                refusal.append(error)
                call.cancel()

        call = self._memory.IngestDocument(forwarded(), timeout=timeout)
        try:
            response = await call
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as error:
            if refusal:
                raise refusal[0] from None
            if isinstance(error, asyncio.CancelledError):
                call.cancel()
                raise
            raise _passed_on(error) from None
        return gateway_pb2.IngestDocumentResponse(document=response.document)

    async def upload(
        self, principal: Principal, request: gateway_pb2.UploadDocumentRequest, timeout: float
    ) -> gateway_pb2.UploadDocumentResponse:
        """A whole document in one request: ingested exactly as the same bytes streamed."""
        if not request.HasField("header"):
            raise errors.InvalidArgument("header", "required")
        content = request.content

        async def parts() -> AsyncIterator[gateway_pb2.IngestDocumentRequest]:
            yield gateway_pb2.IngestDocumentRequest(header=request.header)
            for start in range(0, len(content), UPLOAD_PIECE_BYTES):
                yield gateway_pb2.IngestDocumentRequest(
                    content=content[start : start + UPLOAD_PIECE_BYTES]
                )

        response = await self.ingest(principal, parts(), timeout)
        return gateway_pb2.UploadDocumentResponse(document=response.document)

    async def documents(
        self, principal: Principal, timeout: float
    ) -> gateway_pb2.ListDocumentsResponse:
        """The tenant's documents."""
        response = await self._memory.ListDocuments(
            memory_pb2.ListDocumentsRequest(tenant_id=principal.tenant_id), timeout=timeout
        )
        return gateway_pb2.ListDocumentsResponse(documents=response.documents)

    async def delete(
        self, principal: Principal, document_id: str, timeout: float
    ) -> gateway_pb2.DeleteDocumentResponse:
        """Deletes one of the tenant's documents (another tenant's: NOT_FOUND)."""
        if not is_valid_id(document_id):
            raise errors.NotFound("document not found")
        response = await self._memory.DeleteDocument(
            memory_pb2.DeleteDocumentRequest(
                tenant_id=principal.tenant_id, document_id=document_id
            ),
            timeout=timeout,
        )
        return gateway_pb2.DeleteDocumentResponse(deleted_chunk_count=response.deleted_chunk_count)

    async def chunk(
        self, principal: Principal, request: gateway_pb2.GetDocumentChunkRequest, timeout: float
    ) -> gateway_pb2.GetDocumentChunkResponse:
        """One chunk of one of the tenant's documents, whole (another tenant's: NOT_FOUND)."""
        check_chunk_reference(request.document_id, request.chunk_index)
        response = await self._memory.GetDocumentChunk(
            memory_pb2.GetDocumentChunkRequest(
                tenant_id=principal.tenant_id,
                document_id=request.document_id,
                chunk_index=request.chunk_index,
            ),
            timeout=timeout,
        )
        return gateway_pb2.GetDocumentChunkResponse(chunk=response.chunk)

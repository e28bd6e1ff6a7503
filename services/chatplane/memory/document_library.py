"""A tenant's document library: ingestion (text → chunks → vectors → the memory index),
listing, reading one chunk and deletion. Documents belong to the tenant: every user of it
recalls their chunks, no other tenant ever sees them (the index's visibility rule)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

import numpy as np

from chatplane.common import errors
from chatplane.common.ids import is_valid_id, new_id
from chatplane.common.settings import Settings
from chatplane.memory.chunk_reference import check_chunk_reference
from chatplane.memory.chunking import chunk_text
from chatplane.memory.conversational_memory import lower_thread_priority
from chatplane.memory.document_header import MARKDOWN, validate_header
from chatplane.memory.document_text import document_text
from chatplane.memory.embedding import SentenceEmbedder
from chatplane.memory.index.base import (
    DocumentChunk,
    DocumentSummary,
    ItemKind,
    MemoryIndex,
    MemoryItem,
    document_item_id,
)
from chatplane.privacy.policy import RedactionPolicy

# Chunks embedded and stored per step: bounds memory and lets queries run in between.
_BATCH: Final = 64
# Quota refusals: nothing frees space but deleting documents; a client may look again later.
_QUOTA_RETRY_SECONDS: Final = 60.0


@dataclass(frozen=True, slots=True)
class DocumentLimits:
    """What one ingestion may take (settings `document_*`, docs/rag.md)."""

    max_bytes: int
    max_chunks: int
    max_tenant_chunks: int
    chunk_chars: int
    overlap_chars: int


def document_limits(settings: Settings) -> DocumentLimits:
    """The limits the settings give."""
    return DocumentLimits(
        max_bytes=settings.document_max_bytes,
        max_chunks=settings.document_max_chunks,
        max_tenant_chunks=settings.tenant_max_document_chunks,
        chunk_chars=settings.document_chunk_chars,
        overlap_chars=settings.document_chunk_overlap_chars,
    )


class DocumentLibrary:
    """Ingest, list and delete a tenant's documents."""

    def __init__(
        self,
        embedder: SentenceEmbedder,
        index: MemoryIndex,
        limits: DocumentLimits,
        redaction: RedactionPolicy | None = None,
    ) -> None:
        self._embedder = embedder
        self._index = index
        self._limits = limits
        self._redaction = redaction or RedactionPolicy()
        # Ingestion is bulk work: one low-priority thread, so queries keep their latency.
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="embed-documents", initializer=lower_thread_priority
        )

    @property
    def limits(self) -> DocumentLimits:
        """The limits in force."""
        return self._limits

    async def ingest(
        self, tenant_id: str, name: str, mime_type: str, content: bytes
    ) -> DocumentSummary:
        """Stores the document's chunks; they are searchable when this returns. A failure part
        way removes what was stored."""
        validate_header(tenant_id, name, mime_type)
        limits = self._limits
        if len(content) > limits.max_bytes:
            raise errors.InvalidArgument(
                "content", f"is {len(content)} bytes; the limit is {limits.max_bytes} bytes"
            )
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(self._pool, document_text, content, mime_type)
        # PII masked before it is indexed (docs/privacy.md).
        text = self._redaction.text(tenant_id, text)
        chunks = chunk_text(
            text,
            markdown=mime_type == MARKDOWN,
            size=limits.chunk_chars,
            overlap=min(limits.overlap_chars, limits.chunk_chars // 2 - 1),
        )
        if len(chunks) > limits.max_chunks:
            raise errors.InvalidArgument(
                "content", f"splits into {len(chunks)} chunks; the limit is {limits.max_chunks}"
            )
        stored = sum(d.chunk_count for d in await self._index.list_documents(tenant_id))
        if stored + len(chunks) > limits.max_tenant_chunks:
            raise errors.ResourceExhausted(
                f"the tenant's documents hold {stored} chunks; this one adds {len(chunks)} and "
                f"the limit is {limits.max_tenant_chunks}: delete documents to make room",
                retry_after=_QUOTA_RETRY_SECONDS,
            )
        document_id = new_id()
        created_at_ms = int(time.time() * 1000)
        items = [
            MemoryItem(
                tenant_id=tenant_id,
                user_id="",
                conversation_id="",
                item_id=document_item_id(document_id, chunk.index),
                kind=ItemKind.DOCUMENT,
                role="",
                text=chunk.text,
                created_at_ms=created_at_ms,
                source=name,
            )
            for chunk in chunks
        ]
        try:
            for start in range(0, len(items), _BATCH):
                batch = items[start : start + _BATCH]
                vectors = await self._embed([item.text for item in batch])
                await self._index.upsert(batch, vectors)
        except BaseException:
            # Never leave half a document behind (cancelled, or the index failed).
            await asyncio.shield(self._index.delete_document(tenant_id, document_id))
            raise
        return DocumentSummary(
            document_id=document_id,
            name=name,
            chunk_count=len(items),
            created_at_ms=created_at_ms,
        )

    async def documents(self, tenant_id: str) -> list[DocumentSummary]:
        """The tenant's documents, newest first."""
        if not tenant_id:
            raise errors.InvalidArgument("tenant_id", "required")
        return await self._index.list_documents(tenant_id)

    async def delete(self, tenant_id: str, document_id: str) -> int:
        """Deletes the tenant's document; NotFound when the tenant has no such document."""
        if not tenant_id:
            raise errors.InvalidArgument("tenant_id", "required")
        if not is_valid_id(document_id):
            raise errors.NotFound("document not found")
        deleted = await self._index.delete_document(tenant_id, document_id)
        if not deleted:
            raise errors.NotFound("document not found")
        return deleted

    async def chunk(self, tenant_id: str, document_id: str, chunk_index: int) -> DocumentChunk:
        """One chunk of the tenant's document, whole; NotFound when the tenant has no such
        document or the document no such chunk."""
        if not tenant_id:
            raise errors.InvalidArgument("tenant_id", "required")
        check_chunk_reference(document_id, chunk_index)
        found = await self._index.document_chunk(tenant_id, document_id, chunk_index)
        if found is None:
            raise errors.NotFound("document chunk not found")
        return found

    async def _embed(self, texts: Sequence[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._embedder.embed, texts)

    def close(self) -> None:
        """Stops the embedding thread."""
        self._pool.shutdown(wait=False)

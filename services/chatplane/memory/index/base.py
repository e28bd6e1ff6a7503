"""The memory index interface: stores conversation turns and document chunks with their vectors,
and recalls them by hybrid (keyword + dense) search, engine-neutral.

Semantics every implementation keeps (the contract suite in tests/contract checks them):

* Isolation: a search for (tenant, user) sees only that user's turns and that tenant's
  documents; nothing of another tenant, and no other user's turns, can ever be returned.
* ``upsert`` is idempotent by (tenant_id, item_id) — the latest version wins — and what it
  stored is visible to ``recent`` and ``search`` as soon as it returns.
* Scores are fused by reciprocal rank (chatplane.memory.index.fusion), so they compare only
  within one result list.
* Failures of the engine (unreachable, closed) raise chatplane.common.errors.Unavailable.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from chatplane.common.closing import AsyncClosable


class ItemKind(enum.Enum):
    """What a memory item is: a message of a conversation, or a chunk of an ingested document."""

    TURN = "turn"
    DOCUMENT = "document"


@dataclass(frozen=True, slots=True)
class MemoryItem:
    """One remembered text. Turns belong to a user; documents to the whole tenant.

    Raises ValueError on construction when the ownership fields do not fit the kind, so an item
    that no search could ever find (or that would be found by the wrong user) cannot be stored.
    """

    tenant_id: str
    user_id: str  # owner; "" for tenant-wide documents
    conversation_id: str  # "" for documents
    item_id: str  # idempotency key: message id, or "<document id>:<chunk no>"
    kind: ItemKind
    role: str  # "user" / "assistant" for turns, "" for documents
    text: str
    created_at_ms: int  # unix epoch milliseconds
    source: str  # document name, or "" for turns

    def __post_init__(self) -> None:
        if not self.tenant_id:
            raise ValueError("a memory item needs a tenant_id")
        if not self.item_id:
            raise ValueError("a memory item needs an item_id")
        if self.kind is ItemKind.TURN:
            if not self.user_id or not self.conversation_id:
                raise ValueError("a turn needs a user_id and a conversation_id")
        elif self.user_id or self.conversation_id:
            raise ValueError("a document belongs to the tenant: no user_id, no conversation_id")


def document_item_id(document_id: str, chunk_index: int) -> str:
    """The item id of a document's chunk: `<document id>:<chunk index>`."""
    return f"{document_id}:{chunk_index}"


def document_chunk_of(item_id: str) -> tuple[str, int]:
    """The (document id, chunk index) a document item id names; ("", 0) when it names none."""
    document_id, _, chunk = item_id.rpartition(":")
    if not document_id or not chunk.isdigit():
        return "", 0
    return document_id, int(chunk)


def unit_rows(vectors: npt.NDArray[Any], dimension: int) -> npt.NDArray[np.float32]:
    """`vectors` as float32 rows of unit norm, the form every index stores and searches: inner
    product is then cosine similarity. A zero row stays zero (similarity 0 to everything).

    Raises ValueError when the shape is not (n, dimension) or a value is not finite.
    """
    if vectors.ndim != 2 or vectors.shape[1] != dimension:
        raise ValueError(f"vectors must have shape (n, {dimension}), not {vectors.shape}")
    rows = np.array(vectors, dtype=np.float32)
    if not np.isfinite(rows).all():
        raise ValueError("vectors must be finite")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    np.divide(rows, norms, out=rows, where=norms > 0)
    return rows


@dataclass(frozen=True, slots=True)
class DocumentSummary:
    """One ingested document of a tenant, as listed: its chunks counted."""

    document_id: str
    name: str  # the chunks' `source`
    chunk_count: int
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class DocumentChunk:
    """One chunk of a tenant's document, whole, with its place in the document."""

    document_id: str
    name: str  # the document's name (the chunks' `source`)
    chunk_index: int
    chunk_count: int  # how many chunks the document has
    text: str


@dataclass(frozen=True, slots=True)
class RecalledItem:
    """A search hit with the ranks it had in each list before fusion."""

    item: MemoryItem
    score: float  # fused score, higher is better
    keyword_rank: int | None  # 1-based rank in the keyword list, None if absent
    dense_rank: int | None  # 1-based rank in the dense list, None if absent


class MemoryIndex(AsyncClosable):
    """A tenant-isolated store of memory items with hybrid search; safe to share between the
    tasks of one event loop."""

    async def open(self) -> None:
        """Contacts the engine and checks that it can hold the index, so that a service fails
        at start rather than on its first call: raises chatplane.common.errors.ConfigError when
        it cannot, Unavailable when the engine cannot be reached now (every call retries).
        The default does nothing: the index is checked on first use."""

    @abc.abstractmethod
    async def upsert(self, items: Sequence[MemoryItem], vectors: npt.NDArray[np.float32]) -> None:
        """Stores `items`, row i of `vectors` (shape (len(items), dimension)) being item i's.

        Idempotent by (tenant_id, item_id): storing an item again replaces it. The items are
        searchable when this returns. Raises ValueError when the shapes do not fit.
        """

    @abc.abstractmethod
    async def indexed_item_ids(self, tenant_id: str, item_ids: Collection[str]) -> set[str]:
        """Those of the tenant's `item_ids` that are stored (what an indexer delivered a batch
        again need not embed again)."""

    @abc.abstractmethod
    async def recent(
        self, tenant_id: str, user_id: str, conversation_id: str, limit: int
    ) -> list[MemoryItem]:
        """The newest `limit` turns of that user's conversation, oldest first."""

    @abc.abstractmethod
    async def search(
        self,
        tenant_id: str,
        user_id: str,
        query_text: str,
        query_vector: npt.NDArray[np.float32],
        k: int,
        exclude_item_ids: Collection[str] = (),
    ) -> list[RecalledItem]:
        """The best `k` of the user's turns and the tenant's documents, best first.

        Hybrid: a keyword ranking of `query_text` and a dense ranking of `query_vector` (unit
        norm, the embedder's dimension) fused by reciprocal rank. Items whose id is in
        `exclude_item_ids` are skipped (e.g. the recent turns already in the prompt). Any query
        text is accepted: it is never parsed as a query language.
        """

    async def recall(
        self,
        tenant_id: str,
        user_id: str,
        conversation_id: str,
        recent_limit: int,
        query_text: str,
        query_vector: npt.NDArray[np.float32],
        k: int,
    ) -> tuple[list[MemoryItem], list[RecalledItem]]:
        """`recent(...)`, then `search(...)` without those recent turns: what a Recall needs.
        An index may answer both with fewer requests (OpenSearch: one multi-search)."""
        recent = await self.recent(tenant_id, user_id, conversation_id, recent_limit)
        relevant = await self.search(
            tenant_id,
            user_id,
            query_text,
            query_vector,
            k,
            exclude_item_ids={item.item_id for item in recent},
        )
        return recent, relevant

    @abc.abstractmethod
    async def delete_conversation(self, tenant_id: str, user_id: str, conversation_id: str) -> int:
        """Deletes the turns of that user's conversation and returns how many there were. The
        conversation stays forgotten: later upserts of its turns are dropped."""

    @abc.abstractmethod
    async def erase_user(self, tenant_id: str, user_id: str) -> int:
        """Deletes every turn of that user, in any conversation (erasure, docs/privacy.md);
        how many there were. Documents belong to the tenant and stay. Runs after the upserts
        that returned before it."""

    @abc.abstractmethod
    async def list_documents(self, tenant_id: str) -> list[DocumentSummary]:
        """The tenant's documents (items of kind DOCUMENT grouped by the document id of their
        item ids, see `document_item_id`), newest first."""

    @abc.abstractmethod
    async def delete_document(self, tenant_id: str, document_id: str) -> int:
        """Deletes every chunk of that tenant's document; how many there were (0: no such
        document, or another tenant's). Runs after the upserts that returned before it."""

    @abc.abstractmethod
    async def document_chunk(
        self, tenant_id: str, document_id: str, chunk_index: int
    ) -> DocumentChunk | None:
        """Chunk `chunk_index` of that tenant's document with the document's chunk count, as
        stored; None when the tenant has no such document or the document no such chunk (a
        document of another tenant included)."""

    @abc.abstractmethod
    async def user_turns(
        self, tenant_id: str, user_id: str, *, limit: int, after: str = ""
    ) -> list[MemoryItem]:
        """Up to `limit` of that user's turns as stored, in item id order, with item ids
        after `after` ("" from the first): an export pages through them (docs/privacy.md)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finishes work under way and releases the index's resources; idempotent."""

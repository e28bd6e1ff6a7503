"""Conversational memory: embeds messages and queries with the sentence-embedding model and
keeps them in a memory index; recall = recent turns of the conversation + hybrid search over
the user's other turns and the tenant's documents."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from chatplane.common import errors
from chatplane.memory.embedding import SentenceEmbedder
from chatplane.memory.index.base import ItemKind, MemoryIndex, MemoryItem, RecalledItem

MAX_TOP_K = 50
MAX_RECENT = 100


@dataclass(frozen=True, slots=True)
class RememberedMessage:
    """A message to remember."""

    message_id: str
    role: str
    text: str
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class Recall:
    """Recent turns (oldest first) and relevant items (best first)."""

    recent: Sequence[MemoryItem]
    relevant: Sequence[RecalledItem]


def _require_owner(tenant_id: str, user_id: str) -> None:
    if not tenant_id:
        raise errors.InvalidArgument("tenant_id", "required")
    if not user_id:
        raise errors.InvalidArgument("user_id", "required")


class ConversationalMemory:
    """Remember and recall, scoped to one tenant and user per call."""

    def __init__(self, embedder: SentenceEmbedder, index: MemoryIndex) -> None:
        self._embedder = embedder
        self._index = index

    async def _embed(self, texts: Sequence[str]) -> np.ndarray:
        # numpy releases the GIL in its kernels: a worker thread keeps the event loop free.
        return await asyncio.to_thread(self._embedder.embed, texts)

    async def remember(
        self,
        tenant_id: str,
        user_id: str,
        conversation_id: str,
        messages: Sequence[RememberedMessage],
    ) -> int:
        """Stores the messages; they are searchable when this returns."""
        _require_owner(tenant_id, user_id)
        if not conversation_id:
            raise errors.InvalidArgument("conversation_id", "required")
        if any(not m.message_id for m in messages):
            raise errors.InvalidArgument("messages.message_id", "required")
        items = [
            MemoryItem(
                tenant_id=tenant_id,
                user_id=user_id,
                conversation_id=conversation_id,
                item_id=m.message_id,
                kind=ItemKind.TURN,
                role=m.role,
                text=m.text,
                created_at_ms=m.created_at_ms,
                source="",
            )
            for m in messages
            if m.text.strip()
        ]
        if not items:
            return 0
        vectors = await self._embed([i.text for i in items])
        await self._index.upsert(items, vectors)
        return len(items)

    async def recall(
        self,
        tenant_id: str,
        user_id: str,
        conversation_id: str,
        query: str,
        recent_limit: int,
        top_k: int,
    ) -> Recall:
        """Recent turns of the conversation and the items most relevant to `query`."""
        _require_owner(tenant_id, user_id)
        if not 0 <= recent_limit <= MAX_RECENT:
            raise errors.InvalidArgument("recent_limit", f"must be between 0 and {MAX_RECENT}")
        if not 0 <= top_k <= MAX_TOP_K:
            raise errors.InvalidArgument("top_k", f"must be between 0 and {MAX_TOP_K}")
        recent: list[MemoryItem] = []
        if recent_limit and conversation_id:
            recent = await self._index.recent(tenant_id, user_id, conversation_id, recent_limit)
        relevant: list[RecalledItem] = []
        if top_k and query.strip():
            vector = (await self._embed([query]))[0]
            relevant = await self._index.search(
                tenant_id,
                user_id,
                query,
                vector,
                top_k,
                exclude_item_ids={item.item_id for item in recent},
            )
        return Recall(recent=recent, relevant=relevant)

    async def forget(self, tenant_id: str, user_id: str, conversation_id: str) -> int:
        """Removes every message of the conversation; the count removed."""
        _require_owner(tenant_id, user_id)
        if not conversation_id:
            raise errors.InvalidArgument("conversation_id", "required")
        return await self._index.delete_conversation(tenant_id, user_id, conversation_id)

    async def close(self) -> None:
        """Closes the index."""
        await self._index.close()

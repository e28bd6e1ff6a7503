"""Conversational memory: embeds messages and queries with the sentence-embedding model and
keeps them in a memory index; recall = recent turns of the conversation + hybrid search over
the user's other turns and the tenant's documents."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from chatplane.common import errors
from chatplane.memory.embedding import SentenceEmbedder
from chatplane.memory.index.base import ItemKind, MemoryIndex, MemoryItem, RecalledItem
from chatplane.privacy.policy import RedactionPolicy

MAX_TOP_K = 50
# Niceness of the indexing thread: it yields the CPU to queries and to streaming answers.
_INDEXING_NICENESS = 10
MAX_RECENT = 100


@dataclass(frozen=True, slots=True)
class RememberedMessage:
    """A message to remember."""

    message_id: str
    role: str
    text: str
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class OwnedMessage:
    """A message to remember with its owner and conversation (a batch from the message log
    holds messages of many)."""

    tenant_id: str
    user_id: str
    conversation_id: str
    message: RememberedMessage


@dataclass(frozen=True, slots=True)
class Recall:
    """Recent turns (oldest first) and relevant items (best first)."""

    recent: Sequence[MemoryItem]
    relevant: Sequence[RecalledItem]


def lower_thread_priority() -> None:
    """Lowers the calling thread's CPU priority (Linux applies nice values per thread)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _INDEXING_NICENESS)


def _require_owner(tenant_id: str, user_id: str) -> None:
    if not tenant_id:
        raise errors.InvalidArgument("tenant_id", "required")
    if not user_id:
        raise errors.InvalidArgument("user_id", "required")


class ConversationalMemory:
    """Remember and recall, scoped to one tenant and user per call."""

    def __init__(
        self,
        embedder: SentenceEmbedder,
        index: MemoryIndex,
        redaction: RedactionPolicy | None = None,
    ) -> None:
        self._embedder = embedder
        self._index = index
        # PII masked before a turn is indexed (docs/privacy.md); the original stays in the
        # system of record only.
        self._redaction = redaction or RedactionPolicy()
        # Queries are on the path to an answer's first token; indexing a finished turn is
        # background work. Two pools, so indexing runs at a lower CPU priority and never
        # queues in front of a query.
        self._query_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="embed-query")
        self._index_pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="embed-index", initializer=lower_thread_priority
        )

    async def _embed(self, texts: Sequence[str], pool: ThreadPoolExecutor) -> np.ndarray:
        # The model runs outside the GIL: a worker thread keeps the event loop free.
        return await asyncio.get_running_loop().run_in_executor(pool, self._embedder.embed, texts)

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
        return await self._upsert(
            [OwnedMessage(tenant_id, user_id, conversation_id, m) for m in messages]
        )

    async def remember_new(self, messages: Sequence[OwnedMessage]) -> int:
        """Indexes messages of any owners with one embedding call, leaving out those indexed
        already (a batch of the log delivered again is not embedded again); the count newly
        indexed. Messages of deleted conversations are dropped by the index."""
        by_tenant: dict[str, set[str]] = {}
        for owned in messages:
            by_tenant.setdefault(owned.tenant_id, set()).add(owned.message.message_id)
        indexed: set[tuple[str, str]] = set()
        for tenant_id, ids in by_tenant.items():
            found = await self._index.indexed_item_ids(tenant_id, ids)
            indexed.update((tenant_id, item_id) for item_id in found)
        return await self._upsert(
            [m for m in messages if (m.tenant_id, m.message.message_id) not in indexed]
        )

    async def _upsert(self, messages: Sequence[OwnedMessage]) -> int:
        items = [
            MemoryItem(
                tenant_id=owned.tenant_id,
                user_id=owned.user_id,
                conversation_id=owned.conversation_id,
                item_id=owned.message.message_id,
                kind=ItemKind.TURN,
                role=owned.message.role,
                text=self._redaction.text(owned.tenant_id, owned.message.text),
                created_at_ms=owned.message.created_at_ms,
                source="",
            )
            for owned in messages
            if owned.message.text.strip()
        ]
        if not items:
            return 0
        vectors = await self._embed([i.text for i in items], self._index_pool)
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
        if recent_limit and conversation_id and top_k and query.strip():
            # Both parts: the index may serve them in one request (docs/opensearch.md).
            vector = (await self._embed([query], self._query_pool))[0]
            both = await self._index.recall(
                tenant_id, user_id, conversation_id, recent_limit, query, vector, top_k
            )
            return Recall(recent=both[0], relevant=both[1])
        recent: list[MemoryItem] = []
        if recent_limit and conversation_id:
            recent = await self._index.recent(tenant_id, user_id, conversation_id, recent_limit)
        relevant: list[RecalledItem] = []
        if top_k and query.strip():
            vector = (await self._embed([query], self._query_pool))[0]
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

    async def user_turns(
        self, tenant_id: str, user_id: str, *, limit: int, after: str = ""
    ) -> list[MemoryItem]:
        """A page of the user's turns as indexed, in item id order (for an export)."""
        return await self._index.user_turns(tenant_id, user_id, limit=limit, after=after)

    async def erase_user(
        self, tenant_id: str, user_id: str, conversation_ids: Sequence[str]
    ) -> int:
        """Erasure (docs/privacy.md): forgets each of the user's conversations (so that a turn
        indexed late from the message log never brings one back), then every other turn of
        the user; the count removed."""
        _require_owner(tenant_id, user_id)
        removed = 0
        for conversation_id in conversation_ids:
            if conversation_id:
                removed += await self._index.delete_conversation(
                    tenant_id, user_id, conversation_id
                )
        return removed + await self._index.erase_user(tenant_id, user_id)

    async def close(self) -> None:
        """Closes the index and the embedding pools."""
        await self._index.close()
        self._query_pool.shutdown(wait=False)
        self._index_pool.shutdown(wait=False)

"""The cluster-profile memory index on OpenSearch: BM25 over an English-analysed text field and
k-NN (Lucene HNSW) over the embedding, both filtered by tenant and user inside the engine, fused
by reciprocal rank in the client exactly like the PostgreSQL index.

opensearch-py's synchronous client runs on a small pool of worker threads (one pooled HTTP
connection each), so no extra async HTTP stack is needed. Writes are micro-batched: concurrent
upserts within a few milliseconds go to OpenSearch as one bulk request with
``refresh=wait_for``, and each returns once its items are searchable. A conversation's delete
runs in the same write queue and leaves a tombstone, so later upserts of its turns are dropped.
docs/opensearch.md has the mapping, the query shapes and the isolation argument.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt
import opensearchpy

from chatplane.common.errors import Unavailable
from chatplane.memory.index.base import (
    DocumentChunk,
    DocumentSummary,
    ItemKind,
    MemoryIndex,
    MemoryItem,
    RecalledItem,
    document_chunk_of,
    document_item_id,
    unit_rows,
)
from chatplane.memory.index.fusion import DEFAULT_RRF_K, fuse_reciprocal_rank

Vectors = npt.NDArray[np.float32]
Json = dict[str, Any]
_P = ParamSpec("_P")
_T = TypeVar("_T")

_log = logging.getLogger(__name__)

# OpenSearch caps from+size (index.max_result_window) and a knn query's k at 10,000.
MAX_HITS: Final = 10_000
# The fields a hit carries back: everything but the vector (1.5 KB of JSON per hit otherwise).
_SOURCE_FIELDS: Final = (
    "tenant_id",
    "user_id",
    "conversation_id",
    "item_id",
    "kind",
    "role",
    "text",
    "created_at",
    "source",
)
# Word runs of the query (letters, digits, underscore, combining accents). The keyword query is
# rebuilt from at most this many characters of distinct runs: BM25 gains nothing from a pasted
# essay, and fewer than 1,024 analysed terms keep the match query under OpenSearch's boolean
# clause limit whatever the text (each term is at least one character).
_QUERY_TERM: Final = re.compile(r"(?:\w|[\u0300-\u036f])+")
_MAX_QUERY_CHARS: Final = 512
# Bulk and search statuses that mean "the engine cannot take this now": retry later.
_UNAVAILABLE_STATUSES: Final = frozenset({429, 502, 503, 504})
# delete_by_query skips documents changed while it runs; retrying a few times deletes them too.
_DELETE_ATTEMPTS: Final = 3
# The `kind` of the marker document of a deleted conversation: neither a turn nor a document,
# so no search, `recent` or delete ever matches it.
FORGOTTEN_KIND: Final = "forgotten_conversation"
# Escaping of the tenant part of a document _id, so that f"{tenant}:{item}" is unambiguous.
_ID_ESCAPES: Final = str.maketrans({"%": "%25", ":": "%3A", "#": "%23"})
_MAX_ID_BYTES: Final = 512


def index_definition(
    dimension: int,
    *,
    shards: int = 1,
    replicas: int = 0,
    refresh_interval: str = "100ms",
    hnsw_m: int = 16,
    hnsw_ef_construction: int = 100,
) -> Json:
    """Settings and mappings of a memory index (the body of the create-index request).

    Public so that a rebuild can create a fresh index of the same shape. The vector field
    names the Lucene engine explicitly: the k-NN plugin's default engine (faiss) has no native
    library in the Maven Central plugin and takes the node down (docs/engines.md). The space is
    inner product over unit vectors, i.e. cosine, which unlike `cosinesimil` also accepts a
    zero vector.
    """
    return {
        "settings": {
            "index": {
                "number_of_shards": shards,
                "number_of_replicas": replicas,
                "refresh_interval": refresh_interval,
                "knn": True,
            },
            "analysis": {
                "filter": {
                    "memory_possessive": {"type": "stemmer", "language": "possessive_english"},
                    "memory_stop": {"type": "stop", "stopwords": "_english_"},
                    "memory_stemmer": {"type": "stemmer", "language": "english"},
                },
                "analyzer": {
                    # OpenSearch's `english` analyzer plus ASCII folding, so "cafe" finds
                    # "café" (as the PostgreSQL index's unaccent does).
                    "memory_english": {
                        "type": "custom",
                        "tokenizer": "standard",
                        "filter": [
                            "memory_possessive",
                            "lowercase",
                            "asciifolding",
                            "memory_stop",
                            "memory_stemmer",
                        ],
                    }
                },
            },
        },
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "tenant_id": {"type": "keyword"},
                "user_id": {"type": "keyword"},
                "conversation_id": {"type": "keyword"},
                "item_id": {"type": "keyword"},
                "kind": {"type": "keyword"},
                "role": {"type": "keyword"},
                "created_at": {"type": "date", "format": "epoch_millis"},
                "source": {"type": "keyword"},
                # Document chunks only: the document they belong to (listing and deletion).
                "document_id": {"type": "keyword"},
                "text": {"type": "text", "analyzer": "memory_english"},
                "vector": {
                    "type": "knn_vector",
                    "dimension": dimension,
                    "method": {
                        "name": "hnsw",
                        "engine": "lucene",
                        "space_type": "innerproduct",
                        "parameters": {"m": hnsw_m, "ef_construction": hnsw_ef_construction},
                    },
                },
            },
        },
    }


def document_id(tenant_id: str, item_id: str) -> str:
    """The document `_id` of an item: `<tenant>:<item id>`, unique per (tenant, item id).

    The tenant part is escaped (`%`, `:`, `#`), so tenant "a:b" with item "c" and tenant "a"
    with item "b:c" never share a document. An id over OpenSearch's 512-byte limit becomes `#`
    and a SHA-256 of both parts instead (`#` cannot begin an escaped tenant).
    """
    readable = f"{tenant_id.translate(_ID_ESCAPES)}:{item_id}"
    if len(readable.encode()) <= _MAX_ID_BYTES:
        return readable
    digest = hashlib.sha256(f"{tenant_id}\x00{item_id}".encode()).hexdigest()
    return "#" + digest


def tombstone_id(tenant_id: str, user_id: str, conversation_id: str) -> str:
    """The `_id` of the marker of a forgotten conversation: `#forgotten:` and a SHA-256 of the
    owner, distinct from every item's `_id` (escaped tenants never begin with `#`, and hashed
    item ids are `#` and hex digits only)."""
    owner = f"{tenant_id}\x00{user_id}\x00{conversation_id}".encode()
    return "#forgotten:" + hashlib.sha256(owner).hexdigest()


def document_source(item: MemoryItem, vector: Sequence[float]) -> Json:
    """The stored document of an item and its (unit-norm) vector."""
    source: Json = {
        "tenant_id": item.tenant_id,
        "user_id": item.user_id,
        "conversation_id": item.conversation_id,
        "item_id": item.item_id,
        "kind": item.kind.value,
        "role": item.role,
        "text": item.text,
        "created_at": item.created_at_ms,
        "source": item.source,
        "vector": list(vector),
    }
    if item.kind is ItemKind.DOCUMENT:
        source["document_id"] = document_chunk_of(item.item_id)[0]
    return source


def visibility_filter(tenant_id: str, user_id: str, exclude_item_ids: Collection[str] = ()) -> Json:
    """The filter every search applies inside the engine: the tenant, and within it the user's
    own turns or the tenant's documents; minus `exclude_item_ids`."""
    visible: Json = {
        "bool": {
            "filter": [{"term": {"tenant_id": tenant_id}}],
            "should": [
                {"bool": {"filter": [{"term": {"kind": "turn"}}, {"term": {"user_id": user_id}}]}},
                {"bool": {"filter": [{"term": {"kind": "document"}}, {"term": {"user_id": ""}}]}},
            ],
            "minimum_should_match": 1,
        }
    }
    if exclude_item_ids:
        visible["bool"]["must_not"] = [{"terms": {"item_id": sorted(exclude_item_ids)}}]
    return visible


def keyword_query_text(text: str) -> str:
    """The text the BM25 query searches for: the distinct word runs of `text`, in order, cut to
    a bounded length. Empty when `text` has no word at all."""
    normalized = unicodedata.normalize("NFC", text)
    runs = list(dict.fromkeys(_QUERY_TERM.findall(normalized)))
    kept: list[str] = []
    length = 0
    for run in runs:
        if length + len(run) > _MAX_QUERY_CHARS:
            if not kept:
                kept.append(run[:_MAX_QUERY_CHARS])
            break
        kept.append(run)
        length += len(run) + 1
    return " ".join(kept)


def _item(source: Mapping[str, Any]) -> MemoryItem:
    return MemoryItem(
        tenant_id=source["tenant_id"],
        user_id=source["user_id"],
        conversation_id=source["conversation_id"],
        item_id=source["item_id"],
        kind=ItemKind(source["kind"]),
        role=source["role"],
        text=source["text"],
        created_at_ms=int(source["created_at"]),
        source=source["source"],
    )


def _visible(item: MemoryItem, tenant_id: str, user_id: str) -> bool:
    """The visibility rule again, in the client, for every hit whatever query produced it."""
    if item.tenant_id != tenant_id:
        return False
    if item.kind is ItemKind.TURN:
        return item.user_id == user_id
    return item.user_id == ""


def _error_type(error: opensearchpy.TransportError) -> str:
    """The engine's error type only: its reason may quote document or query text."""
    info = error.info
    if isinstance(info, dict):
        root = info.get("error")
        if isinstance(root, dict) and isinstance(root.get("type"), str):
            return str(root["type"])
    return str(error.error) if isinstance(error.error, str) else "unknown"


def _recent_body(tenant_id: str, user_id: str, conversation_id: str, limit: int) -> Json:
    """The search of `recent`: the newest `limit` turns of the conversation."""
    return {
        "size": min(limit, MAX_HITS),
        "track_total_hits": False,
        "_source": list(_SOURCE_FIELDS),
        "query": {
            "bool": {
                "filter": [
                    {"term": {"tenant_id": tenant_id}},
                    {"term": {"user_id": user_id}},
                    {"term": {"conversation_id": conversation_id}},
                    {"term": {"kind": ItemKind.TURN.value}},
                ]
            }
        },
        # Ties on the timestamp go to the item id, so the order is deterministic.
        "sort": [{"created_at": "desc"}, {"item_id": "desc"}],
    }


def _recent_items(
    response: Json, tenant_id: str, user_id: str, conversation_id: str
) -> list[MemoryItem]:
    """The turns of a `_recent_body` response, oldest first, checked again in the client."""
    items = [_item(hit["_source"]) for hit in response["hits"]["hits"]]
    return [
        item
        for item in reversed(items)
        if _visible(item, tenant_id, user_id) and item.conversation_id == conversation_id
    ]


def _keyword_body(keyword_text: str, visible: Json, size: int) -> Json:
    """The BM25 candidate search."""
    return {
        "size": size,
        "track_total_hits": False,
        "_source": list(_SOURCE_FIELDS),
        "query": {
            "bool": {
                "must": [{"match": {"text": {"query": keyword_text}}}],
                "filter": [visible],
            }
        },
        "sort": [{"_score": "desc"}, {"item_id": "asc"}],
    }


def _dense_body(query: Vectors, visible: Json, size: int) -> Json:
    """The k-NN candidate search. The filter runs inside the HNSW search (Lucene's filtered
    k-NN, exact when few documents pass), so invisible items never take a place."""
    return {
        "size": size,
        "track_total_hits": False,
        "_source": list(_SOURCE_FIELDS),
        "query": {"knn": {"vector": {"vector": query.tolist(), "k": size, "filter": visible}}},
    }


def _ranking(
    response: Json,
    tenant_id: str,
    user_id: str,
    skipped: Collection[str],
    size: int,
    found: dict[str, MemoryItem],
) -> list[str]:
    """The item ids of a candidate search's hits in rank order, without `skipped`, at most
    `size`; each hit's item goes into `found`. Every hit is checked again in the client."""
    ranking: list[str] = []
    for hit in response["hits"]["hits"]:
        item = _item(hit["_source"])
        if not _visible(item, tenant_id, user_id):
            # Unreachable while the engine filter holds; never return such a hit.
            _log.error("memory index returned an invisible hit", extra={"id": hit["_id"]})
            continue
        if item.item_id in skipped:
            continue
        found[item.item_id] = item
        ranking.append(item.item_id)
        if len(ranking) == size:
            break
    return ranking


@dataclass(slots=True)
class _PendingWrite:
    """One upsert call waiting for its bulk request: its action and source lines."""

    lines: list[Json]
    done: asyncio.Future[None]

    @property
    def items(self) -> int:
        """How many items the write stores (two bulk lines each)."""
        return len(self.lines) // 2


@dataclass(slots=True)
class _PendingExclusive:
    """Work that runs alone, in queue order, between bulk requests (a conversation's delete)."""

    work: Callable[[], Awaitable[Any]]
    done: asyncio.Future[Any]


@dataclass(slots=True)
class _WriteBatcher:
    """Group commit of upserts: writes arriving within `window` seconds of the first one go out
    as one bulk request; while a request is in flight new writes gather for the next. At most
    one request is outstanding and everything queued (bulk writes and exclusive work such as
    deletes) reaches the engine in call order."""

    send: Callable[[list[_PendingWrite]], Awaitable[None]]  # settles every write's future
    window: float
    max_items: int
    queue: list[_PendingWrite | _PendingExclusive] = field(default_factory=list)
    in_flight: list[_PendingWrite | _PendingExclusive] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def submit(self, lines: list[Json]) -> asyncio.Future[None]:
        """Queues a write; the future settles when it is stored and searchable (or failed)."""
        write = _PendingWrite(lines, asyncio.get_running_loop().create_future())
        self._enqueue(write)
        return write.done

    def submit_exclusive(self, work: Callable[[], Awaitable[_T]]) -> asyncio.Future[_T]:
        """Queues `work` to run alone after everything queued before it; its result."""
        done: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        self._enqueue(_PendingExclusive(work, done))
        return done

    async def drain(self) -> None:
        """Waits until everything queued or in flight now has settled."""
        pending = [entry.done for entry in (*self.in_flight, *self.queue)]
        if pending:
            await asyncio.wait(pending)

    def _enqueue(self, entry: _PendingWrite | _PendingExclusive) -> None:
        self.queue.append(entry)
        if self.task is None:
            self.task = asyncio.create_task(self._flush(), name="memory-index-bulk")

    async def _flush(self) -> None:
        try:
            waited = False
            while self.queue:
                head = self.queue[0]
                if isinstance(head, _PendingExclusive):
                    self.queue.pop(0)
                    if not head.done.cancelled():
                        await self._run_exclusive(head)
                    continue
                if not waited and self._queued_items() < self.max_items:
                    await asyncio.sleep(self.window)
                batch = self._take_batch()
                if batch:
                    self.in_flight = list(batch)
                    try:
                        await self.send(batch)
                    finally:
                        self.in_flight = []
                # Writes that arrived meanwhile have waited one request already.
                waited = bool(self.queue)
        finally:
            self.task = None

    def _take_batch(self) -> list[_PendingWrite]:
        batch: list[_PendingWrite] = []
        items = 0
        while self.queue:
            write = self.queue[0]
            if isinstance(write, _PendingExclusive):
                break  # it runs after this batch, in order
            if batch and items + write.items > self.max_items:
                break
            self.queue.pop(0)
            if write.done.cancelled():  # the caller gave up before it was sent
                continue
            batch.append(write)
            items += write.items
        return batch

    async def _run_exclusive(self, entry: _PendingExclusive) -> None:
        self.in_flight = [entry]
        try:
            result = await entry.work()
        except Exception as error:
            if not entry.done.done():
                entry.done.set_exception(error)
        else:
            if not entry.done.done():
                entry.done.set_result(result)
        finally:
            self.in_flight = []

    def _queued_items(self) -> int:
        total = 0
        for entry in self.queue:
            if isinstance(entry, _PendingExclusive):
                break
            total += entry.items
        return total


class OpenSearchMemoryIndex(MemoryIndex):
    """MemoryIndex on an OpenSearch index with the k-NN plugin (Lucene engine).

    The index is created on first use when missing, and an existing one is checked (vector
    dimension, Lucene engine) so a mismatch fails loudly instead of mis-ranking. Until
    OpenSearch can be reached every call raises Unavailable; nothing is cached in between, so
    service starts and restarts of the engine need no coordination.
    """

    def __init__(
        self,
        url: str,
        *,
        index: str,
        dimension: int = 384,
        candidates_per_result: int = 4,
        rrf_k: int = DEFAULT_RRF_K,
        request_timeout: float = 10.0,
        max_connections: int = 8,
        batch_window_seconds: float = 0.002,
        max_batch_items: int = 500,
        refresh_interval: str = "100ms",
        shards: int = 1,
        replicas: int = 0,
    ) -> None:
        if not url:
            raise ValueError("an OpenSearch URL is required")
        if not index:
            raise ValueError("an index name is required")
        if dimension < 1 or candidates_per_result < 1 or max_connections < 1:
            raise ValueError(
                "dimension, candidates_per_result and max_connections must be positive"
            )
        if max_batch_items < 1 or batch_window_seconds < 0 or request_timeout <= 0:
            raise ValueError("max_batch_items and request_timeout must be positive")
        _keep_texts_out_of_client_logs()
        self._index = index
        self._dimension = dimension
        self._candidates_per_result = candidates_per_result
        self._rrf_k = rrf_k
        self._timeout = request_timeout
        self._definition = index_definition(
            dimension, shards=shards, replicas=replicas, refresh_interval=refresh_interval
        )
        self._client = opensearchpy.OpenSearch(
            hosts=[url],
            timeout=request_timeout,
            pool_maxsize=max_connections,
            # One retry on a dropped connection or a 502/503/504; every request is idempotent.
            max_retries=1,
            retry_on_timeout=False,
        )
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_connections, thread_name_prefix="opensearch-index"
        )
        self._batcher = _WriteBatcher(self._send_batch, batch_window_seconds, max_batch_items)
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._closed = False

    @property
    def index_name(self) -> str:
        """The OpenSearch index (or alias) this memory index uses."""
        return self._index

    async def ensure_index(self) -> None:
        """Creates the index when missing and checks an existing one; every call does this on
        first use, a service may call it at start to fail fast. Raises Unavailable when
        OpenSearch cannot be reached, RuntimeError when the index has another shape."""
        if self._ready:
            return
        async with self._ready_lock:
            if not self._ready:
                await self._call("create index", self._create_or_check)
                self._ready = True

    async def upsert(self, items: Sequence[MemoryItem], vectors: npt.NDArray[np.float32]) -> None:
        if len(vectors) != len(items):
            raise ValueError(f"{len(items)} items but {len(vectors)} vectors")
        if not items:
            return
        rows = unit_rows(vectors, self._dimension)
        await self.ensure_index()
        lines: list[Json] = []
        for item, row in zip(items, rows, strict=True):
            lines.append({"index": {"_id": document_id(item.tenant_id, item.item_id)}})
            lines.append(document_source(item, row.tolist()))
        self._check_open()
        await self._batcher.submit(lines)

    async def indexed_item_ids(self, tenant_id: str, item_ids: Collection[str]) -> set[str]:
        if not item_ids:
            return set()
        await self.ensure_index()
        ordered = sorted(item_ids)
        return await self._call("indexed ids", self._stored_ids, tenant_id, ordered)

    async def recent(
        self, tenant_id: str, user_id: str, conversation_id: str, limit: int
    ) -> list[MemoryItem]:
        if limit <= 0:
            return []
        await self.ensure_index()
        body = _recent_body(tenant_id, user_id, conversation_id, limit)
        response = await self._call("recent", self._search, body)
        return _recent_items(response, tenant_id, user_id, conversation_id)

    async def search(
        self,
        tenant_id: str,
        user_id: str,
        query_text: str,
        query_vector: npt.NDArray[np.float32],
        k: int,
        exclude_item_ids: Collection[str] = (),
    ) -> list[RecalledItem]:
        if k <= 0:
            return []
        query = unit_rows(np.reshape(query_vector, (1, -1)), self._dimension)[0]
        await self.ensure_index()
        candidates = min(k * self._candidates_per_result, MAX_HITS)
        visible = visibility_filter(tenant_id, user_id, frozenset(exclude_item_ids))
        searches: list[Json] = []
        keyword_text = keyword_query_text(query_text)
        if keyword_text:
            searches.append(_keyword_body(keyword_text, visible, candidates))
        if query.any():
            searches.append(_dense_body(query, visible, candidates))
        if not searches:
            return []
        responses = await self._call("search", self._multi_search, searches)
        found: dict[str, MemoryItem] = {}
        rankings = [
            _ranking(response, tenant_id, user_id, (), candidates, found) for response in responses
        ]
        keyword = rankings[0] if keyword_text else []
        dense = rankings[-1] if query.any() else []
        fused = fuse_reciprocal_rank(keyword, dense, k, self._rrf_k)
        return [
            RecalledItem(found[f.item_id], f.score, f.keyword_rank, f.dense_rank) for f in fused
        ]

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
        """One `_msearch` of `recent`, the BM25 list and the k-NN list, instead of `recent`
        and then `search`'s `_msearch`: one request and one round trip fewer. The recent
        turns are not known when the candidate lists are searched, so each list is searched
        `recent_limit` deeper and they are dropped from it here, which leaves exactly
        `search`'s candidates (docs/opensearch.md)."""
        query = unit_rows(np.reshape(query_vector, (1, -1)), self._dimension)[0]
        keyword_text = keyword_query_text(query_text)
        if recent_limit <= 0 or k <= 0 or not conversation_id or not (keyword_text or query.any()):
            return await super().recall(
                tenant_id, user_id, conversation_id, recent_limit, query_text, query_vector, k
            )
        await self.ensure_index()
        limit = min(recent_limit, MAX_HITS)
        candidates = min(k * self._candidates_per_result, MAX_HITS)
        depth = min(candidates + limit, MAX_HITS)
        visible = visibility_filter(tenant_id, user_id)
        searches = [_recent_body(tenant_id, user_id, conversation_id, limit)]
        if keyword_text:
            searches.append(_keyword_body(keyword_text, visible, depth))
        if query.any():
            searches.append(_dense_body(query, visible, depth))
        responses = await self._call("recall", self._multi_search, searches)
        recent = _recent_items(responses[0], tenant_id, user_id, conversation_id)
        skipped = {item.item_id for item in recent}
        found: dict[str, MemoryItem] = {}
        rankings = [
            _ranking(response, tenant_id, user_id, skipped, candidates, found)
            for response in responses[1:]
        ]
        keyword = rankings[0] if keyword_text else []
        dense = rankings[-1] if query.any() else []
        fused = fuse_reciprocal_rank(keyword, dense, k, self._rrf_k)
        relevant = [
            RecalledItem(found[f.item_id], f.score, f.keyword_rank, f.dense_rank) for f in fused
        ]
        return recent, relevant

    async def delete_conversation(self, tenant_id: str, user_id: str, conversation_id: str) -> int:
        await self.ensure_index()
        self._check_open()
        # In the write queue: upserts made before the delete land first and are deleted; upserts
        # made after it find the conversation's tombstone and are dropped.
        return await self._batcher.submit_exclusive(
            functools.partial(self._forget, tenant_id, user_id, conversation_id)
        )

    async def _forget(self, tenant_id: str, user_id: str, conversation_id: str) -> int:
        if user_id and conversation_id:  # no turn can belong to an empty owner
            await self._execute("delete", self._put_tombstone, tenant_id, user_id, conversation_id)
        query: Json = {
            "bool": {
                "filter": [
                    {"term": {"tenant_id": tenant_id}},
                    {"term": {"user_id": user_id}},
                    {"term": {"conversation_id": conversation_id}},
                    {"term": {"kind": ItemKind.TURN.value}},
                ]
            }
        }
        return await self._delete_matching(query)

    async def erase_user(self, tenant_id: str, user_id: str) -> int:
        if not user_id:  # no turn belongs to an empty user
            return 0
        await self.ensure_index()
        self._check_open()
        # In the write queue, as delete_conversation: upserts made before it are deleted too.
        return await self._batcher.submit_exclusive(
            functools.partial(self._erase_user, tenant_id, user_id)
        )

    async def _erase_user(self, tenant_id: str, user_id: str) -> int:
        query: Json = {
            "bool": {
                "filter": [
                    {"term": {"tenant_id": tenant_id}},
                    {"term": {"user_id": user_id}},
                    {"term": {"kind": ItemKind.TURN.value}},
                ]
            }
        }
        return await self._delete_matching(query)

    async def list_documents(self, tenant_id: str) -> list[DocumentSummary]:
        await self.ensure_index()
        body: Json = {
            "size": 0,
            "track_total_hits": False,
            "query": {"bool": {"filter": _tenant_documents(tenant_id)}},
            "aggs": {
                "documents": {
                    "terms": {
                        "field": "document_id",
                        "size": MAX_HITS,
                        "order": [{"created": "desc"}, {"_key": "asc"}],
                    },
                    "aggs": {
                        "created": {"min": {"field": "created_at"}},
                        "name": {"top_hits": {"size": 1, "_source": ["source", "tenant_id"]}},
                    },
                }
            },
        }
        response = await self._call("list documents", self._search, body)
        documents: list[DocumentSummary] = []
        for bucket in response["aggregations"]["documents"]["buckets"]:
            hits = bucket["name"]["hits"]["hits"]
            if not hits or hits[0]["_source"].get("tenant_id") != tenant_id:
                continue
            documents.append(
                DocumentSummary(
                    document_id=str(bucket["key"]),
                    name=str(hits[0]["_source"]["source"]),
                    chunk_count=int(bucket["doc_count"]),
                    created_at_ms=int(bucket["created"]["value"] or 0),
                )
            )
        return documents

    async def document_chunk(
        self, tenant_id: str, document_id: str, chunk_index: int
    ) -> DocumentChunk | None:
        if not document_id or chunk_index < 0:
            return None
        await self.ensure_index()
        item_id = document_item_id(document_id, chunk_index)
        # One search: the document's chunks counted (the total), the chunk itself from a
        # filter aggregation over them.
        body: Json = {
            "size": 0,
            "track_total_hits": True,
            "query": {
                "bool": {
                    "filter": [
                        *_tenant_documents(tenant_id),
                        {"term": {"document_id": document_id}},
                    ]
                }
            },
            "aggs": {
                "chunk": {
                    "filter": {"term": {"item_id": item_id}},
                    "aggs": {"hit": {"top_hits": {"size": 1, "_source": list(_SOURCE_FIELDS)}}},
                }
            },
        }
        response = await self._call("document chunk", self._search, body)
        hits = response["aggregations"]["chunk"]["hit"]["hits"]["hits"]
        if not hits:
            return None
        item = _item(hits[0]["_source"])
        if item.item_id != item_id or not _visible(item, tenant_id, ""):
            return None
        return DocumentChunk(
            document_id=document_id,
            name=item.source,
            chunk_index=chunk_index,
            chunk_count=int(response["hits"]["total"]["value"]),
            text=item.text,
        )

    async def user_turns(
        self, tenant_id: str, user_id: str, *, limit: int, after: str = ""
    ) -> list[MemoryItem]:
        if limit <= 0:
            return []
        await self.ensure_index()
        body: Json = {
            "size": min(limit, MAX_HITS),
            "track_total_hits": False,
            "_source": list(_SOURCE_FIELDS),
            "query": {
                "bool": {
                    "filter": [
                        {"term": {"tenant_id": tenant_id}},
                        {"term": {"user_id": user_id}},
                        {"term": {"kind": ItemKind.TURN.value}},
                    ]
                }
            },
            # item_id is a keyword: a total order to page through with search_after.
            "sort": [{"item_id": "asc"}],
        }
        if after:
            body["search_after"] = [after]
        response = await self._call("user turns", self._search, body)
        items = [_item(hit["_source"]) for hit in response["hits"]["hits"]]
        return [item for item in items if _visible(item, tenant_id, user_id)]

    async def delete_document(self, tenant_id: str, document_id: str) -> int:
        if not document_id:
            return 0
        await self.ensure_index()
        self._check_open()
        # In the write queue, so the chunks of an ingestion that returned are all deleted.
        return await self._batcher.submit_exclusive(
            functools.partial(self._delete_document, tenant_id, document_id)
        )

    async def _delete_document(self, tenant_id: str, document_id: str) -> int:
        query: Json = {
            "bool": {
                "filter": [
                    {"term": {"tenant_id": tenant_id}},
                    {"term": {"kind": ItemKind.DOCUMENT.value}},
                    {"term": {"document_id": document_id}},
                ]
            }
        }
        return await self._delete_matching(query)

    async def _delete_matching(self, query: Json) -> int:
        """Delete what `query` matches; a version conflict (an item written meanwhile) is
        retried up to _DELETE_ATTEMPTS times. The count deleted."""
        deleted = 0
        for _ in range(_DELETE_ATTEMPTS):
            response = await self._execute("delete", self._delete_by_query, query)
            deleted += int(response.get("deleted", 0))
            if not response.get("version_conflicts"):
                break
        return deleted

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._batcher.drain()
        finally:
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self._executor, self._client.close)
            finally:
                self._executor.shutdown(wait=False, cancel_futures=True)

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the memory index is closed")

    async def _call(
        self, operation: str, work: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Runs a blocking client call on a worker thread; engine trouble becomes Unavailable,
        anything else a RuntimeError that names the error type but quotes no text."""
        self._check_open()
        return await self._execute(operation, work, *args, **kwargs)

    async def _execute(
        self, operation: str, work: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """_call without the closed check: close() still flushes the writes queued before."""
        call = functools.partial(work, *args, **kwargs)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except opensearchpy.ConnectionError as error:
            # Refused, reset or timed out: the engine is down or overloaded.
            raise Unavailable(f"OpenSearch is unreachable ({operation})") from error
        except opensearchpy.TransportError as error:
            if error.status_code in _UNAVAILABLE_STATUSES:
                raise Unavailable(
                    f"OpenSearch cannot serve {operation} now ({error.status_code})"
                ) from None
            raise RuntimeError(
                f"OpenSearch rejected {operation}: {error.status_code} {_error_type(error)}"
            ) from None

    # Everything below runs on a worker thread.

    def _create_or_check(self) -> None:
        if not self._client.indices.exists(index=self._index):
            try:
                self._client.indices.create(index=self._index, body=self._definition)
                _log.info("created the memory index", extra={"index": self._index})
                return
            except opensearchpy.RequestError as error:
                if _error_type(error) != "resource_already_exists_exception":
                    raise
        mappings = self._client.indices.get_mapping(index=self._index)
        for name, mapping in mappings.items():
            properties = mapping.get("mappings", {}).get("properties", {})
            vector = properties.get("vector", {})
            method = vector.get("method", {})
            if vector.get("dimension") != self._dimension or method.get("engine") != "lucene":
                raise RuntimeError(
                    f"OpenSearch index {name} is not a memory index of {self._dimension}-"
                    f"dimensional vectors on the lucene engine: {vector.get('dimension')}, "
                    f"{method.get('engine')}"
                )
            if "document_id" not in properties:
                # An index made before document ingestion: the field is added (additive).
                self._client.indices.put_mapping(
                    index=name, body={"properties": {"document_id": {"type": "keyword"}}}
                )

    def _search(self, body: Json) -> Json:
        response: Json = self._client.search(
            index=self._index, body=body, request_timeout=self._timeout
        )
        return response

    def _multi_search(self, searches: list[Json]) -> list[Json]:
        lines: list[Json] = []
        for body in searches:
            lines += [{}, body]
        response = self._client.msearch(
            index=self._index, body=lines, request_timeout=self._timeout
        )
        results: list[Json] = response["responses"]
        for result in results:
            if "error" in result:
                status = int(result.get("status", 500))
                raise opensearchpy.TransportError(status, "search", result)
        return results

    def _put_tombstone(self, tenant_id: str, user_id: str, conversation_id: str) -> None:
        self._client.index(
            index=self._index,
            id=tombstone_id(tenant_id, user_id, conversation_id),
            body={
                "tenant_id": tenant_id,
                "user_id": user_id,
                "conversation_id": conversation_id,
                "kind": FORGOTTEN_KIND,
            },
            request_timeout=self._timeout,
        )

    def _stored_ids(self, tenant_id: str, item_ids: Sequence[str]) -> set[str]:
        """Which of the tenant's items are stored; a realtime get, like `_forgotten`."""
        response = self._client.mget(
            index=self._index,
            body={"ids": [document_id(tenant_id, item_id) for item_id in item_ids]},
            params={"_source": "false"},
            request_timeout=self._timeout,
        )
        return {
            item_id
            for item_id, doc in zip(item_ids, response["docs"], strict=True)
            if doc.get("found")
        }

    def _forgotten(self, owners: set[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
        """Which of these (tenant, user, conversation) were deleted; a realtime get, so a
        tombstone counts as soon as it was written, refreshed or not."""
        ordered = sorted(owners)
        response = self._client.mget(
            index=self._index,
            body={"ids": [tombstone_id(*owner) for owner in ordered]},
            params={"_source": "false"},
            request_timeout=self._timeout,
        )
        return {
            owner for owner, doc in zip(ordered, response["docs"], strict=True) if doc.get("found")
        }

    def _delete_by_query(self, query: Json) -> Json:
        response: Json = self._client.delete_by_query(
            index=self._index,
            body={"query": query},
            refresh=True,
            conflicts="proceed",
            request_timeout=max(self._timeout, 60.0),
        )
        return response

    def _bulk(self, lines: list[Json]) -> Json:
        response: Json = self._client.bulk(
            index=self._index,
            body=lines,
            refresh="wait_for",
            # wait_for returns after the next refresh: up to refresh_interval more.
            request_timeout=self._timeout + 5.0,
        )
        return response

    async def _send_batch(self, batch: list[_PendingWrite]) -> None:
        """Sends one bulk request for `batch` and settles each write's future. Turns of
        conversations deleted before are dropped (delete_conversation keeps them forgotten)."""
        try:
            kept = await self._without_forgotten(batch)
            lines = [line for write in kept for line in write.lines]
            response = await self._execute("upsert", self._bulk, lines) if lines else {}
        except BaseException as error:
            for write in batch:
                if not write.done.done():
                    write.done.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        results = response.get("items", [])
        offset = 0
        for write, sent in zip(batch, kept, strict=True):
            failure = _first_failure(results[offset : offset + sent.items])
            offset += sent.items
            if write.done.done():
                continue
            if failure is None:
                write.done.set_result(None)
            else:
                write.done.set_exception(failure)

    async def _without_forgotten(self, batch: list[_PendingWrite]) -> list[_PendingWrite]:
        """Each write with the turns of forgotten conversations taken out (same order)."""
        owners = {
            (source["tenant_id"], source["user_id"], source["conversation_id"])
            for write in batch
            for source in write.lines[1::2]
            if source["kind"] == ItemKind.TURN.value
        }
        if not owners:
            return batch
        forgotten = await self._execute("upsert", self._forgotten, owners)
        if not forgotten:
            return batch
        kept: list[_PendingWrite] = []
        for write in batch:
            lines: list[Json] = []
            for action, source in zip(write.lines[0::2], write.lines[1::2], strict=True):
                owner = (source["tenant_id"], source["user_id"], source["conversation_id"])
                if source["kind"] == ItemKind.TURN.value and owner in forgotten:
                    continue
                lines += [action, source]
            kept.append(_PendingWrite(lines, write.done))
        return kept


def _first_failure(results: Sequence[Json]) -> Exception | None:
    """The error of the first failed item of a bulk response, as a domain exception."""
    for result in results:
        outcome: Json = next(iter(result.values()), {})
        error = outcome.get("error")
        if error is None:
            continue
        status = int(outcome.get("status", 500))
        error_type = error.get("type", "unknown") if isinstance(error, dict) else "unknown"
        if status in _UNAVAILABLE_STATUSES:
            return Unavailable(f"OpenSearch cannot store memory items now ({error_type})")
        return RuntimeError(f"OpenSearch rejected a memory item: {status} {error_type}")
    return None


@functools.cache
def _keep_texts_out_of_client_logs() -> None:
    """opensearch-py logs request and response bodies (message text) at DEBUG on the
    `opensearch` logger and as curl lines on `opensearchpy.trace`; chatplane logs never carry
    message content, so both stay quiet whatever the root level is."""
    logging.getLogger("opensearch").setLevel(logging.WARNING)
    tracer = logging.getLogger("opensearchpy.trace")
    tracer.setLevel(logging.WARNING)
    tracer.propagate = False


def _tenant_documents(tenant_id: str) -> list[Json]:
    """The filter terms of a tenant's document chunks (shared by the tenant: no user)."""
    return [
        {"term": {"tenant_id": tenant_id}},
        {"term": {"kind": ItemKind.DOCUMENT.value}},
        {"term": {"user_id": ""}},
    ]

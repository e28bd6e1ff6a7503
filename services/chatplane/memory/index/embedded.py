"""The embedded memory index: one SQLite file (FTS5 for keywords, float32 BLOBs for vectors) and
an in-memory vector matrix per tenant for exact cosine search; zero setup, survives restarts.

SQLite blocks, so every call runs on one dedicated worker thread that alone owns the connection
and the matrices: no locks, and writes and searches see one consistent state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import os
import re
import sqlite3
import unicodedata
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt

from chatplane.common.errors import Unavailable
from chatplane.memory.index.base import (
    DocumentSummary,
    ItemKind,
    MemoryIndex,
    MemoryItem,
    RecalledItem,
    document_chunk_of,
)
from chatplane.memory.index.fusion import DEFAULT_RRF_K, fuse_reciprocal_rank

Vectors = npt.NDArray[np.float32]
_P = ParamSpec("_P")
_T = TypeVar("_T")

_SCHEMA_VERSION: Final = 2
_SCHEMA: Final = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    scope TEXT NOT NULL,
    vector BLOB NOT NULL,
    UNIQUE (tenant_id, item_id)
) STRICT;
CREATE INDEX items_by_conversation
    ON items (tenant_id, user_id, conversation_id, created_at_ms) WHERE kind = 'turn';
-- External content: the text lives once, in items; triggers keep the index in step.
-- Porter stemming lets "passwords" find "password"; remove_diacritics lets "cafe" find "café".
CREATE VIRTUAL TABLE items_fts USING fts5(
    text, scope, content = 'items', content_rowid = 'id',
    tokenize = 'porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER items_fts_insert AFTER INSERT ON items BEGIN
    INSERT INTO items_fts (rowid, text, scope) VALUES (new.id, new.text, new.scope);
END;
CREATE TRIGGER items_fts_delete AFTER DELETE ON items BEGIN
    INSERT INTO items_fts (items_fts, rowid, text, scope)
        VALUES ('delete', old.id, old.text, old.scope);
END;
CREATE TRIGGER items_fts_update AFTER UPDATE ON items BEGIN
    INSERT INTO items_fts (items_fts, rowid, text, scope)
        VALUES ('delete', old.id, old.text, old.scope);
    INSERT INTO items_fts (rowid, text, scope) VALUES (new.id, new.text, new.scope);
END;
"""
# Version 2: conversations the user deleted, so that a late upsert (a retried Remember) never
# brings them back.
_SCHEMA_V2: Final = """
CREATE TABLE forgotten_conversations (
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, user_id, conversation_id)
) STRICT, WITHOUT ROWID;
"""
_ITEM_COLUMNS: Final = (
    "tenant_id, user_id, conversation_id, item_id, kind, role, text, created_at_ms, source"
)
# The authoritative visibility rule, applied to every row a search returns whatever index
# produced it: the user's own turns and the tenant's documents.
_VISIBLE: Final = (
    "tenant_id = ? AND ((kind = 'turn' AND user_id = ?) OR (kind = 'document' AND user_id = ''))"
)
# Letters, digits and combining accents: the characters FTS5's unicode61 tokenizer keeps in
# tokens. Each run becomes a quoted FTS5 string, so no query text can be read as FTS5 syntax.
_QUERY_TERM: Final = re.compile(r"(?:[^\W_]|[\u0300-\u036f])+")
# Bounds the cost of a pasted essay as a query; BM25 gains nothing from more terms.
_MAX_QUERY_TERMS: Final = 64
_DOCUMENT_SCOPE: Final = 0
_FREE_SLOT: Final = -1


def _scope_token(kind: ItemKind, tenant_id: str, user_id: str) -> str:
    """The FTS5 token naming who may see an item, so a keyword search walks only the postings
    of its own (tenant, user) and documents instead of every tenant's."""
    digest = hashlib.blake2b(
        f"{kind.value}\x1f{tenant_id}\x1f{user_id}".encode(), digest_size=16
    ).hexdigest()
    return "s" + digest


def _fts_query(tenant_id: str, user_id: str, text: str) -> str | None:
    normalized = unicodedata.normalize("NFC", text)
    terms = list(dict.fromkeys(term.lower() for term in _QUERY_TERM.findall(normalized)))
    if not terms:
        return None
    scopes = (
        _scope_token(ItemKind.TURN, tenant_id, user_id),
        _scope_token(ItemKind.DOCUMENT, tenant_id, ""),
    )
    scope_part = " OR ".join(f'"{scope}"' for scope in scopes)
    text_part = " OR ".join(f'"{term}"' for term in terms[:_MAX_QUERY_TERMS])
    return f"scope : ({scope_part}) AND text : ({text_part})"


def _unit_rows(vectors: npt.NDArray[Any], dimension: int) -> Vectors:
    if vectors.ndim != 2 or vectors.shape[1] != dimension:
        raise ValueError(f"vectors must have shape (n, {dimension}), not {vectors.shape}")
    rows = np.array(vectors, dtype=np.float32)
    if not np.isfinite(rows).all():
        raise ValueError("vectors must be finite")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    # Cosine = dot product only for unit rows; a zero row stays zero (similarity 0 to all).
    np.divide(rows, norms, out=rows, where=norms > 0)
    return rows


@dataclass(slots=True)
class _TenantVectors:
    """One tenant's vectors in memory. Slot i holds item_ids[i]; freed slots are reused."""

    dimension: int
    vectors: Vectors = field(init=False)
    scopes: npt.NDArray[np.int64] = field(init=False)  # _DOCUMENT_SCOPE, a user code, or free
    item_ids: list[str | None] = field(default_factory=list)
    slot_of: dict[str, int] = field(default_factory=dict)
    user_codes: dict[str, int] = field(default_factory=dict)
    free_slots: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.vectors = np.zeros((0, self.dimension), dtype=np.float32)
        self.scopes = np.zeros(0, dtype=np.int64)

    def put(self, item_id: str, kind: ItemKind, user_id: str, vector: Vectors) -> None:
        slot = self.slot_of.get(item_id)
        if slot is None:
            slot = self.free_slots.pop() if self.free_slots else self._append_slot()
            self.slot_of[item_id] = slot
            self.item_ids[slot] = item_id
        self.vectors[slot] = vector
        self.scopes[slot] = (
            _DOCUMENT_SCOPE
            if kind is ItemKind.DOCUMENT
            else self.user_codes.setdefault(user_id, len(self.user_codes) + 1)
        )

    def remove(self, item_id: str) -> None:
        slot = self.slot_of.pop(item_id, None)
        if slot is not None:
            self.item_ids[slot] = None
            self.scopes[slot] = _FREE_SLOT
            self.free_slots.append(slot)

    def nearest(
        self, user_id: str, query: Vectors, limit: int, exclude: Collection[str]
    ) -> list[str]:
        used = len(self.item_ids)
        if used == 0 or limit <= 0:
            return []
        scopes = self.scopes[:used]
        visible = scopes == _DOCUMENT_SCOPE
        user_code = self.user_codes.get(user_id)
        if user_code is not None:
            visible |= scopes == user_code
        for item_id in exclude:
            slot = self.slot_of.get(item_id)
            if slot is not None:
                visible[slot] = False
        candidates = np.flatnonzero(visible)
        if candidates.size == 0:
            return []
        # One matrix-vector product over every slot beats gathering the visible rows first.
        scores = (self.vectors[:used] @ query)[candidates]
        limit = min(limit, candidates.size)
        best = np.argpartition(-scores, limit - 1)[:limit]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [item_id for item_id in (self.item_ids[i] for i in candidates[best]) if item_id]

    def _append_slot(self) -> int:
        slot = len(self.item_ids)
        if slot == self.vectors.shape[0]:
            # Doubling keeps the amortised cost of growth constant per item.
            capacity = max(1024, 2 * slot)
            vectors = np.zeros((capacity, self.dimension), dtype=np.float32)
            vectors[:slot] = self.vectors[:slot]
            scopes = np.full(capacity, _FREE_SLOT, dtype=np.int64)
            scopes[:slot] = self.scopes[:slot]
            self.vectors, self.scopes = vectors, scopes
        self.item_ids.append(None)
        return slot


class EmbeddedMemoryIndex(MemoryIndex):
    """MemoryIndex on one SQLite file; the file is opened on first use, in the worker thread.

    Memory: each tenant's vectors stay in RAM once touched (dimension * 4 bytes per item,
    ~150 MB for 100k items of 384 floats, up to twice that while the matrix grows); the first
    search of a tenant loads them from disk (~0.7 s for 100k items).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        dimension: int = 384,
        candidates_per_result: int = 4,
        rrf_k: int = DEFAULT_RRF_K,
    ) -> None:
        if dimension < 1 or candidates_per_result < 1:
            raise ValueError("dimension and candidates_per_result must be positive")
        self._path = Path(path)
        self._dimension = dimension
        self._candidates_per_result = candidates_per_result
        self._rrf_k = rrf_k
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="memory-index"
        )
        self._closed = False
        # Touched only by the worker thread.
        self._connection: sqlite3.Connection | None = None
        self._tenants: dict[str, _TenantVectors] = {}

    async def upsert(self, items: Sequence[MemoryItem], vectors: npt.NDArray[np.float32]) -> None:
        if len(vectors) != len(items):
            raise ValueError(f"{len(items)} items but {len(vectors)} vectors")
        if not items:
            return
        await self._run(self._upsert, list(items), _unit_rows(vectors, self._dimension))

    async def recent(
        self, tenant_id: str, user_id: str, conversation_id: str, limit: int
    ) -> list[MemoryItem]:
        if limit <= 0:
            return []
        return await self._run(self._recent, tenant_id, user_id, conversation_id, limit)

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
        query = _unit_rows(np.reshape(query_vector, (1, -1)), self._dimension)[0]
        return await self._run(
            self._search,
            tenant_id,
            user_id,
            query_text,
            query,
            k=k,
            exclude=frozenset(exclude_item_ids),
        )

    async def delete_conversation(self, tenant_id: str, user_id: str, conversation_id: str) -> int:
        return await self._run(self._delete_conversation, tenant_id, user_id, conversation_id)

    async def erase_user(self, tenant_id: str, user_id: str) -> int:
        if not user_id:  # no turn belongs to an empty user
            return 0
        return await self._run(self._erase_user, tenant_id, user_id)

    async def list_documents(self, tenant_id: str) -> list[DocumentSummary]:
        return await self._run(self._list_documents, tenant_id)

    async def delete_document(self, tenant_id: str, document_id: str) -> int:
        if not document_id:
            return 0
        return await self._run(self._delete_document, tenant_id, document_id)

    async def user_turns(
        self, tenant_id: str, user_id: str, *, limit: int, after: str = ""
    ) -> list[MemoryItem]:
        if limit <= 0:
            return []
        return await self._run(self._user_turns, tenant_id, user_id, limit, after)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, work: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        if self._closed:
            raise Unavailable("the memory index is closed")
        call = functools.partial(work, *args, **kwargs)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except sqlite3.OperationalError as error:
            # Locked, disk full, I/O error: the engine's trouble, not the caller's.
            raise Unavailable(f"the memory index failed: {error}") from error

    # Everything below runs on the worker thread only.

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = self._open()
        return self._connection

    def _open(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self._path, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            # An index can be rebuilt from the system of record; a power cut may lose the last
            # transactions but never corrupts the file.
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute("PRAGMA busy_timeout = 5000")
            (version,) = connection.execute("PRAGMA user_version").fetchone()
            if version == 0:
                # One script, one transaction: executescript() would commit a transaction
                # opened outside it. On failure, close() below rolls it back.
                connection.executescript(
                    f"""BEGIN IMMEDIATE;
                    {_SCHEMA}
                    {_SCHEMA_V2}
                    INSERT INTO meta (key, value) VALUES ('dimension', '{self._dimension:d}');
                    PRAGMA user_version = {_SCHEMA_VERSION:d};
                    COMMIT;"""
                )
            elif version == 1:
                connection.executescript(
                    f"BEGIN IMMEDIATE; {_SCHEMA_V2} PRAGMA user_version = 2; COMMIT;"
                )
            elif version != _SCHEMA_VERSION:
                raise RuntimeError(f"{self._path}: unknown memory index schema {version}")
            (stored,) = connection.execute(
                "SELECT value FROM meta WHERE key = 'dimension'"
            ).fetchone()
            if int(stored) != self._dimension:
                raise RuntimeError(
                    f"{self._path} holds {stored}-dimensional vectors, not {self._dimension}"
                )
        except BaseException:
            connection.close()
            raise
        return connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.execute("PRAGMA optimize")
            self._connection.close()
            self._connection = None
        self._tenants.clear()

    def _tenant(self, tenant_id: str) -> _TenantVectors:
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            tenant = _TenantVectors(self._dimension)
            rows = self._db().execute(
                "SELECT item_id, kind, user_id, vector FROM items WHERE tenant_id = ?",
                (tenant_id,),
            )
            for item_id, kind, user_id, vector in rows:
                tenant.put(item_id, ItemKind(kind), user_id, np.frombuffer(vector, "<f4"))
            self._tenants[tenant_id] = tenant
        return tenant

    def _upsert(self, items: list[MemoryItem], vectors: Vectors) -> None:
        connection = self._db()
        with _transaction(connection):
            keep = [
                index
                for index, item in enumerate(items)
                if item.kind is ItemKind.DOCUMENT
                or connection.execute(
                    "SELECT 1 FROM forgotten_conversations"
                    " WHERE tenant_id = ? AND user_id = ? AND conversation_id = ?",
                    (item.tenant_id, item.user_id, item.conversation_id),
                ).fetchone()
                is None
            ]
            items = [items[i] for i in keep]
            vectors = vectors[keep]
            blobs = vectors.astype("<f4", copy=False)
            connection.executemany(
                f"""INSERT INTO items ({_ITEM_COLUMNS}, scope, vector)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (tenant_id, item_id) DO UPDATE SET
                        user_id = excluded.user_id,
                        conversation_id = excluded.conversation_id,
                        kind = excluded.kind,
                        role = excluded.role,
                        text = excluded.text,
                        created_at_ms = excluded.created_at_ms,
                        source = excluded.source,
                        scope = excluded.scope,
                        vector = excluded.vector""",
                (
                    (
                        item.tenant_id,
                        item.user_id,
                        item.conversation_id,
                        item.item_id,
                        item.kind.value,
                        item.role,
                        item.text,
                        item.created_at_ms,
                        item.source,
                        _scope_token(item.kind, item.tenant_id, item.user_id),
                        blob.tobytes(),
                    )
                    for item, blob in zip(items, blobs, strict=True)
                ),
            )
        # After the commit, so memory never holds what the file does not; tenants not loaded
        # yet will read these rows from the file.
        for item, vector in zip(items, vectors, strict=True):
            tenant = self._tenants.get(item.tenant_id)
            if tenant is not None:
                tenant.put(item.item_id, item.kind, item.user_id, vector)

    def _recent(
        self, tenant_id: str, user_id: str, conversation_id: str, limit: int
    ) -> list[MemoryItem]:
        rows = (
            self._db()
            .execute(
                f"""SELECT {_ITEM_COLUMNS} FROM items
                WHERE tenant_id = ? AND user_id = ? AND conversation_id = ? AND kind = 'turn'
                ORDER BY created_at_ms DESC, id DESC LIMIT ?""",
                (tenant_id, user_id, conversation_id, limit),
            )
            .fetchall()
        )
        return [_item(row) for row in reversed(rows)]

    def _search(
        self,
        tenant_id: str,
        user_id: str,
        query_text: str,
        query: Vectors,
        *,
        k: int,
        exclude: frozenset[str],
    ) -> list[RecalledItem]:
        candidates = k * self._candidates_per_result
        keyword = self._keyword_ranking(tenant_id, user_id, query_text, candidates, exclude)
        dense: list[str] = []
        if query.any():
            dense = self._tenant(tenant_id).nearest(user_id, query, candidates, exclude)
        fused = fuse_reciprocal_rank(keyword, dense, k, self._rrf_k)
        if not fused:
            return []
        placeholders = ", ".join("?" * len(fused))
        rows = self._db().execute(
            f"SELECT {_ITEM_COLUMNS} FROM items WHERE {_VISIBLE} AND item_id IN ({placeholders})",
            (tenant_id, user_id, *(f.item_id for f in fused)),
        )
        found = {item.item_id: item for item in map(_item, rows)}
        return [
            RecalledItem(found[f.item_id], f.score, f.keyword_rank, f.dense_rank)
            for f in fused
            if f.item_id in found
        ]

    def _keyword_ranking(
        self, tenant_id: str, user_id: str, text: str, limit: int, exclude: frozenset[str]
    ) -> list[str]:
        match = _fts_query(tenant_id, user_id, text)
        if match is None:
            return []
        # bm25() is lower-is-better; the scope column only filters, so it weighs nothing.
        rows = self._db().execute(
            f"""SELECT items.item_id FROM (
                    SELECT rowid AS id, bm25(items_fts, 1.0, 0.0) AS rank
                    FROM items_fts WHERE items_fts MATCH ? ORDER BY rank LIMIT ?
                ) AS hit JOIN items USING (id)
                WHERE {_VISIBLE}
                ORDER BY hit.rank, items.id""",
            (match, limit + len(exclude), tenant_id, user_id),
        )
        ranking = [item_id for (item_id,) in rows if item_id not in exclude]
        return ranking[:limit]

    def _delete_conversation(self, tenant_id: str, user_id: str, conversation_id: str) -> int:
        connection = self._db()
        with _transaction(connection):
            connection.execute(
                "INSERT OR IGNORE INTO forgotten_conversations VALUES (?, ?, ?)",
                (tenant_id, user_id, conversation_id),
            )
            deleted = connection.execute(
                """DELETE FROM items
                   WHERE tenant_id = ? AND user_id = ? AND conversation_id = ? AND kind = 'turn'
                   RETURNING item_id""",
                (tenant_id, user_id, conversation_id),
            ).fetchall()
        tenant = self._tenants.get(tenant_id)
        if tenant is not None:
            for (item_id,) in deleted:
                tenant.remove(item_id)
        return len(deleted)

    def _user_turns(self, tenant_id: str, user_id: str, limit: int, after: str) -> list[MemoryItem]:
        rows = (
            self._db()
            .execute(
                f"""SELECT {_ITEM_COLUMNS} FROM items
                WHERE tenant_id = ? AND user_id = ? AND kind = 'turn' AND item_id > ?
                ORDER BY item_id LIMIT ?""",
                (tenant_id, user_id, after, limit),
            )
            .fetchall()
        )
        return [_item(row) for row in rows]

    def _erase_user(self, tenant_id: str, user_id: str) -> int:
        connection = self._db()
        with _transaction(connection):
            deleted = connection.execute(
                """DELETE FROM items WHERE tenant_id = ? AND user_id = ? AND kind = 'turn'
                   RETURNING item_id""",
                (tenant_id, user_id),
            ).fetchall()
        tenant = self._tenants.get(tenant_id)
        if tenant is not None:
            for (item_id,) in deleted:
                tenant.remove(item_id)
        return len(deleted)

    def _list_documents(self, tenant_id: str) -> list[DocumentSummary]:
        rows = self._db().execute(
            """SELECT item_id, source, created_at_ms FROM items
               WHERE tenant_id = ? AND kind = 'document'""",
            (tenant_id,),
        )
        documents: dict[str, DocumentSummary] = {}
        for item_id, source, created_at_ms in rows:
            document_id, _ = document_chunk_of(item_id)
            if not document_id:
                continue
            known = documents.get(document_id)
            documents[document_id] = DocumentSummary(
                document_id=document_id,
                name=source if known is None else known.name,
                chunk_count=1 if known is None else known.chunk_count + 1,
                created_at_ms=created_at_ms
                if known is None
                else min(known.created_at_ms, created_at_ms),
            )
        return sorted(documents.values(), key=lambda d: (-d.created_at_ms, d.document_id))

    def _delete_document(self, tenant_id: str, document_id: str) -> int:
        connection = self._db()
        with _transaction(connection):
            # The chunks' ids sort between "<id>:" and "<id>;" (";" follows ":"), so the
            # (tenant_id, item_id) index finds them; ids of a longer document id are skipped.
            rows = connection.execute(
                """SELECT id, item_id FROM items
                   WHERE tenant_id = ? AND kind = 'document' AND item_id >= ? AND item_id < ?""",
                (tenant_id, f"{document_id}:", f"{document_id};"),
            ).fetchall()
            doomed = [
                (row_id, item_id)
                for row_id, item_id in rows
                if document_chunk_of(item_id)[0] == document_id
            ]
            connection.executemany(
                "DELETE FROM items WHERE id = ?", [(row_id,) for row_id, _ in doomed]
            )
        tenant = self._tenants.get(tenant_id)
        if tenant is not None:
            for _, item_id in doomed:
                tenant.remove(item_id)
        return len(doomed)


@contextlib.contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error, on an autocommit connection."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _item(row: tuple[Any, ...]) -> MemoryItem:
    """A MemoryItem from a row of _ITEM_COLUMNS (STRICT tables guarantee the types)."""
    tenant_id, user_id, conversation_id, item_id, kind, role, text, created_at_ms, source = row
    return MemoryItem(
        tenant_id=tenant_id,
        user_id=user_id,
        conversation_id=conversation_id,
        item_id=item_id,
        kind=ItemKind(kind),
        role=role,
        text=text,
        created_at_ms=created_at_ms,
        source=source,
    )

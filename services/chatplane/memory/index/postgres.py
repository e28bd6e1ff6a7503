"""The embedded-profile memory index on PostgreSQL: pgvector (HNSW, inner product over unit
vectors, i.e. cosine) for the dense ranking and full-text search (a generated `tsvector`, GIN,
`ts_rank`) for the keyword ranking, fused by reciprocal rank in the client exactly like the
OpenSearch index. docs/rag.md ("The memory index on PostgreSQL") has the schema, the query
shapes and the measurements behind the choices.

The index owns the schema `memory` of the database it is given and creates it on first use,
under an advisory lock, so any number of processes may open the same database at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
import unicodedata
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import psycopg
import psycopg.adapt
import psycopg.errors
import psycopg.pq
import psycopg_pool
from psycopg.types import TypeInfo

from chatplane.common.errors import ConfigError, Unavailable
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
from chatplane.memory.metrics import INDEX_EXACT_FALLBACKS

Vectors = npt.NDArray[np.float32]

_log = logging.getLogger(__name__)

# Bumped when the schema below changes; an index of another version is refused, not guessed at.
SCHEMA_VERSION: Final = 1
# pg_advisory_xact_lock(classid, objid) keys: the schema's creation, and the conversations a
# write touches. The two-int form keeps clear of one-bigint locks other code may take.
_LOCK_CLASS: Final = 0x6D656D  # "mem"
_SCHEMA_LOCK: Final = 0
# An exact scan of the visible rows up to this many; the HNSW index above (docs/rag.md,
# "Dense search: exact below a size, HNSW above").
DEFAULT_EXACT_SCAN_LIMIT: Final = 5_000
# hnsw.ef_search floor: pgvector's default; raised to the number of candidates wanted.
_EF_SEARCH: Final = 40
_MAX_EF_SEARCH: Final = 1000
# Letters, digits and combining accents. Each run is parsed on its own by plainto_tsquery and
# the runs are OR-ed, so no query text is ever read as tsquery syntax.
_QUERY_TERM: Final = re.compile(r"(?:[^\W_]|[\u0300-\u036f])+")
# Bounds the cost of a pasted essay as a query; the ranking gains nothing from more terms.
_MAX_QUERY_TERMS: Final = 64

_ITEM_COLUMNS: Final = (
    "tenant_id, user_id, conversation_id, item_id, kind, role, text, created_at_ms, source"
)
# The newest turns of a conversation (newest first).
_RECENT: Final = f"""SELECT {_ITEM_COLUMNS} FROM memory.items
    WHERE tenant_id = %(tenant)s AND user_id = %(user)s AND conversation_id = %(conversation)s
        AND kind = 'turn'
    ORDER BY created_at_ms DESC, item_id DESC LIMIT %(recent_limit)s"""
# The visibility rule every search applies: the user's own turns and the tenant's documents;
# minus the excluded items and the recent turns. `user_id = ANY(owners)` (the user and "")
# lets the (tenant_id, user_id, ...) index find exactly the visible rows; the kind test is the
# rule itself.
_VISIBLE: Final = f"""tenant_id = %(tenant)s AND user_id = ANY(%(owners)s::text[])
    AND ((kind = 'turn' AND user_id = %(user)s) OR (kind = 'document' AND user_id = ''))
    AND item_id <> ALL(%(exclude)s::text[])
    AND item_id NOT IN (SELECT item_id FROM ({_RECENT}) AS recent)"""
# The keyword ranking: the OR of one plainto_tsquery per query word, ranked by ts_rank.
_KEYWORD: Final = f"""SELECT {_ITEM_COLUMNS}
    FROM memory.items,
        (SELECT memory.any_of(plainto_tsquery('memory.item_text'::regconfig,
             lower(term COLLATE "pg_c_utf8"))) AS query
         FROM unnest(%(terms)s::text[]) AS term) AS q
    WHERE {_VISIBLE} AND search @@ q.query
    ORDER BY ts_rank(search, q.query) DESC, item_id
    LIMIT %(limit)s"""
_EF_SEARCH_SQL: Final = "SELECT set_config('hnsw.ef_search', %(ef_search)s, false)"


def _dense_queries(inner_product: str) -> tuple[str, str]:
    """The dense ranking's statements, given pgvector's `<#>` operator (schema-qualified):
    exact or HNSW by the number of visible rows, and the exact scan alone. Rows are
    _ITEM_COLUMNS, the distance, and whether the HNSW index was asked."""
    distance = f"(embedding {inner_product} %(query)s)"
    # The exact scan: OFFSET 0 keeps the inner query apart, so the HNSW index is never asked
    # to order it; the plan reads the visible rows through the btree index, computes each
    # distance once and keeps the nearest.
    exact_scan = f"""SELECT * FROM (
            SELECT {_ITEM_COLUMNS}, {distance} AS distance, false AS approximate
            FROM memory.items WHERE {_VISIBLE} {{gate}} OFFSET 0) AS scored
        ORDER BY distance, item_id LIMIT %(limit)s"""
    exact = exact_scan.format(gate="")
    by_size = f"""WITH visible AS (
            SELECT count(*) AS n FROM (SELECT 1 FROM memory.items
                WHERE tenant_id = %(tenant)s AND user_id = ANY(%(owners)s::text[])
                LIMIT %(cap)s) AS capped)
        ({exact_scan.format(gate="AND (SELECT n FROM visible) <= %(exact_limit)s")})
        UNION ALL
        (SELECT {_ITEM_COLUMNS}, {distance} AS distance, true AS approximate
            FROM memory.items WHERE {_VISIBLE} AND (SELECT n FROM visible) > %(exact_limit)s
            ORDER BY {distance} LIMIT %(limit)s)"""
    return by_size, exact


def _schema(vector_schema: str, unaccent_schema: str, dimension: int) -> str:
    """The DDL of a fresh index (run once, under the schema lock)."""
    vector = f"{_ident(vector_schema)}.vector"
    unaccent = f"{_ident(unaccent_schema)}.unaccent"
    return f"""
CREATE TABLE memory.meta (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO memory.meta (key, value)
    VALUES ('schema_version', '{SCHEMA_VERSION:d}'), ('dimension', '{dimension:d}');

-- Keyword analysis: PostgreSQL's English configuration (English stop words dropped, Snowball
-- English stems), with accents stripped from words that have any, after lower-casing with full
-- Unicode case mapping whatever the database's locale (docs/rag.md, "Keyword search").
CREATE TEXT SEARCH CONFIGURATION memory.item_text (COPY = pg_catalog.english);
ALTER TEXT SEARCH CONFIGURATION memory.item_text
    ALTER MAPPING FOR word, hword, hword_part WITH {unaccent}, pg_catalog.english_stem;

-- tsquery_or as an aggregate: the OR of one plainto_tsquery per query word.
CREATE AGGREGATE memory.any_of(tsquery) (SFUNC = pg_catalog.tsquery_or, STYPE = tsquery);

CREATE TABLE memory.items (
    tenant_id text NOT NULL,
    -- "C": ordered by code point, as Python orders strings (user_turns pages by it).
    item_id text COLLATE "C" NOT NULL,
    user_id text NOT NULL,
    conversation_id text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('turn', 'document')),
    role text NOT NULL,
    text text NOT NULL,
    created_at_ms bigint NOT NULL,
    source text NOT NULL,
    -- The document a chunk belongs to (base.document_chunk_of); "" for turns.
    document_id text NOT NULL,
    -- Unit norm (or zero): inner product is cosine. PLAIN: 1.5 KB stays in the row, never
    -- compressed or moved to TOAST, so an exact scan reads it in place.
    embedding {vector}({dimension:d}) STORAGE PLAIN NOT NULL,
    search tsvector GENERATED ALWAYS AS
        (to_tsvector('memory.item_text'::regconfig, lower(text COLLATE "pg_c_utf8"))) STORED,
    PRIMARY KEY (tenant_id, item_id)
);
-- The visible rows of a (tenant, user): their turns and the documents (user ""); and a
-- conversation's turns in time order.
CREATE INDEX items_by_owner
    ON memory.items (tenant_id, user_id, conversation_id, created_at_ms, item_id);
CREATE INDEX items_by_document ON memory.items (tenant_id, document_id) WHERE kind = 'document';
CREATE INDEX items_search ON memory.items USING gin (search);
CREATE INDEX items_embedding
    ON memory.items USING hnsw (embedding {_ident(vector_schema)}.vector_ip_ops);

-- Conversations the user deleted, so that a late upsert (a turn indexed from the message
-- log after the delete) never brings them back.
CREATE TABLE memory.forgotten_conversations (
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    conversation_id text NOT NULL,
    PRIMARY KEY (tenant_id, user_id, conversation_id)
);
"""


def _ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _query_terms(text: str) -> list[str]:
    """The distinct word runs of `text` (at most _MAX_QUERY_TERMS), in order."""
    normalized = unicodedata.normalize("NFC", text)
    return list(dict.fromkeys(_QUERY_TERM.findall(normalized)))[:_MAX_QUERY_TERMS]


def _conversation_lock(tenant_id: str, user_id: str, conversation_id: str) -> str:
    """The text whose hash keys the advisory lock of a conversation."""
    return f"{tenant_id}\x1f{user_id}\x1f{conversation_id}"


class _VectorDumper(psycopg.adapt.Dumper):
    """A float32 numpy row in pgvector's binary format: dimension and a reserved int16, then
    big-endian float4s. `oid` is set per database (the vector type's oid varies)."""

    format = psycopg.pq.Format.BINARY

    def dump(self, obj: Any) -> bytes:
        row = np.asarray(obj, dtype=np.float32)
        return struct.pack(">HH", row.shape[0], 0) + row.astype(">f4").tobytes()


class PostgresMemoryIndex(MemoryIndex):
    """MemoryIndex on a PostgreSQL database with pgvector (0.8 or later) and unaccent.

    Nothing is contacted before the first call; then the schema is created or checked (vector
    dimension, schema version) and a connection pool opened. Until the database can be reached
    every call raises Unavailable, and the next call tries again. A database without pgvector,
    or whose index holds vectors of another dimension, raises ConfigError.
    """

    def __init__(
        self,
        dsn: str,
        *,
        dimension: int = 384,
        candidates_per_result: int = 4,
        rrf_k: int = DEFAULT_RRF_K,
        exact_scan_limit: int = DEFAULT_EXACT_SCAN_LIMIT,
        max_connections: int = 8,
        timeout_seconds: float = 10.0,
    ) -> None:
        if not dsn:
            raise ConfigError("the memory index needs a PostgreSQL DSN (CHATPLANE_POSTGRES_DSN)")
        if dimension < 1 or candidates_per_result < 1 or max_connections < 1:
            raise ValueError(
                "dimension, candidates_per_result and max_connections must be positive"
            )
        if exact_scan_limit < 0 or timeout_seconds <= 0:
            raise ValueError("exact_scan_limit and timeout_seconds must not be negative")
        self._dsn = dsn
        self._dimension = dimension
        self._candidates_per_result = candidates_per_result
        self._rrf_k = rrf_k
        self._exact_scan_limit = exact_scan_limit
        self._max_connections = max_connections
        self._timeout = timeout_seconds
        self._pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._open_lock = asyncio.Lock()
        self._closed = False
        # Known once the schema is checked: they name pgvector's schema.
        self._dense_sql = ""
        self._exact_sql = ""

    async def open(self) -> None:
        """Creates or checks the schema and opens the pool (every call does this on first
        use). Raises Unavailable when the database cannot be reached, ConfigError when it
        cannot hold the index."""
        await self._connections()

    # --- the interface --------------------------------------------------------------------

    async def upsert(self, items: Sequence[MemoryItem], vectors: npt.NDArray[np.float32]) -> None:
        if len(vectors) != len(items):
            raise ValueError(f"{len(items)} items but {len(vectors)} vectors")
        if not items:
            return
        rows = unit_rows(vectors, self._dimension)
        # The last version of an item wins within a call too; sorted, so that concurrent
        # writes lock rows in one order and cannot deadlock.
        latest = {(item.tenant_id, item.item_id): i for i, item in enumerate(items)}
        order = [latest[key] for key in sorted(latest)]
        conversations = sorted(
            {
                _conversation_lock(item.tenant_id, item.user_id, item.conversation_id)
                for item in items
                if item.kind is ItemKind.TURN
            }
        )
        params = [
            {
                "tenant": items[i].tenant_id,
                "user": items[i].user_id,
                "conversation": items[i].conversation_id,
                "item": items[i].item_id,
                "kind": items[i].kind.value,
                "role": items[i].role,
                "text": items[i].text,
                "created": items[i].created_at_ms,
                "source": items[i].source,
                "document": document_chunk_of(items[i].item_id)[0]
                if items[i].kind is ItemKind.DOCUMENT
                else "",
                "embedding": rows[i],
            }
            for i in order
        ]
        async with self._transaction() as connection:
            # Shared locks on the conversations written: a delete_conversation (exclusive)
            # runs wholly before or wholly after this write, never between its check of the
            # forgotten conversations and its insert.
            for key in conversations:
                await connection.execute(
                    "SELECT pg_advisory_xact_lock_shared(%s, hashtext(%s))", (_LOCK_CLASS, key)
                )
            async with connection.cursor() as cursor:
                await cursor.executemany(
                    f"""INSERT INTO memory.items ({_ITEM_COLUMNS}, document_id, embedding)
                    SELECT %(tenant)s, %(user)s, %(conversation)s, %(item)s, %(kind)s,
                        %(role)s, %(text)s, %(created)s, %(source)s, %(document)s,
                        %(embedding)s
                    WHERE %(kind)s = 'document' OR NOT EXISTS (
                        SELECT 1 FROM memory.forgotten_conversations
                        WHERE tenant_id = %(tenant)s AND user_id = %(user)s
                            AND conversation_id = %(conversation)s)
                    ON CONFLICT (tenant_id, item_id) DO UPDATE SET
                        user_id = excluded.user_id,
                        conversation_id = excluded.conversation_id,
                        kind = excluded.kind,
                        role = excluded.role,
                        text = excluded.text,
                        created_at_ms = excluded.created_at_ms,
                        source = excluded.source,
                        document_id = excluded.document_id,
                        embedding = excluded.embedding""",
                    params,
                )

    async def indexed_item_ids(self, tenant_id: str, item_ids: Collection[str]) -> set[str]:
        if not item_ids:
            return set()
        async with self._connection() as connection:
            cursor = await connection.execute(
                "SELECT item_id FROM memory.items WHERE tenant_id = %s"
                " AND item_id = ANY(%s::text[])",
                (tenant_id, sorted(item_ids)),
            )
            return {row[0] for row in await cursor.fetchall()}

    async def recent(
        self, tenant_id: str, user_id: str, conversation_id: str, limit: int
    ) -> list[MemoryItem]:
        if limit <= 0:
            return []
        params = {
            "tenant": tenant_id,
            "user": user_id,
            "conversation": conversation_id,
            "recent_limit": limit,
        }
        async with self._connection() as connection:
            cursor = await connection.execute(_RECENT, params)
            return [_item(row) for row in reversed(await cursor.fetchall())]

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
        _, relevant = await self._recall(
            tenant_id, user_id, "", 0, query_text, query, k, exclude_item_ids
        )
        return relevant

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
        """`recent` and `search` without those turns in one round trip: the candidate queries
        leave out the recent turns with the same subquery, on the same snapshot."""
        query = unit_rows(np.reshape(query_vector, (1, -1)), self._dimension)[0]
        return await self._recall(
            tenant_id, user_id, conversation_id, max(recent_limit, 0), query_text, query, k, ()
        )

    async def delete_conversation(self, tenant_id: str, user_id: str, conversation_id: str) -> int:
        if not user_id or not conversation_id:  # no turn can belong to an empty owner
            return 0
        async with self._transaction() as connection:
            await connection.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                (_LOCK_CLASS, _conversation_lock(tenant_id, user_id, conversation_id)),
            )
            await connection.execute(
                """INSERT INTO memory.forgotten_conversations VALUES (%s, %s, %s)
                   ON CONFLICT DO NOTHING""",
                (tenant_id, user_id, conversation_id),
            )
            # A statement after the lock: its snapshot holds every write that held the lock.
            cursor = await connection.execute(
                """DELETE FROM memory.items WHERE tenant_id = %s AND user_id = %s
                   AND conversation_id = %s AND kind = 'turn'""",
                (tenant_id, user_id, conversation_id),
            )
            return cursor.rowcount

    async def erase_user(self, tenant_id: str, user_id: str) -> int:
        if not user_id:  # no turn belongs to an empty user
            return 0
        async with self._transaction() as connection:
            cursor = await connection.execute(
                "DELETE FROM memory.items WHERE tenant_id = %s AND user_id = %s AND kind = 'turn'",
                (tenant_id, user_id),
            )
            return cursor.rowcount

    async def list_documents(self, tenant_id: str) -> list[DocumentSummary]:
        async with self._transaction() as connection:
            cursor = await connection.execute(
                """SELECT document_id, min(source), count(*), min(created_at_ms)
                   FROM memory.items
                   WHERE tenant_id = %s AND kind = 'document' AND document_id <> ''
                   GROUP BY document_id
                   ORDER BY min(created_at_ms) DESC, document_id""",
                (tenant_id,),
            )
            return [
                DocumentSummary(document_id, name, int(count), int(created))
                for document_id, name, count, created in await cursor.fetchall()
            ]

    async def delete_document(self, tenant_id: str, document_id: str) -> int:
        if not document_id:
            return 0
        async with self._transaction() as connection:
            cursor = await connection.execute(
                """DELETE FROM memory.items
                   WHERE tenant_id = %s AND kind = 'document' AND document_id = %s""",
                (tenant_id, document_id),
            )
            return cursor.rowcount

    async def document_chunk(
        self, tenant_id: str, document_id: str, chunk_index: int
    ) -> DocumentChunk | None:
        if not document_id or chunk_index < 0:
            return None
        async with self._transaction() as connection:
            # The chunk by its key, and the document's chunks counted (items_by_document), on
            # one snapshot.
            cursor = await connection.execute(
                """SELECT text, source,
                          (SELECT count(*) FROM memory.items AS chunks
                           WHERE chunks.tenant_id = chunk.tenant_id AND chunks.kind = 'document'
                             AND chunks.document_id = chunk.document_id)
                   FROM memory.items AS chunk
                   WHERE tenant_id = %s AND item_id = %s AND kind = 'document'
                     AND document_id = %s""",
                (tenant_id, document_item_id(document_id, chunk_index), document_id),
            )
            row = await cursor.fetchone()
        if row is None:
            return None
        text, name, count = row
        return DocumentChunk(document_id, name, chunk_index, int(count), text)

    async def user_turns(
        self, tenant_id: str, user_id: str, *, limit: int, after: str = ""
    ) -> list[MemoryItem]:
        if limit <= 0 or not user_id:
            return []
        async with self._transaction() as connection:
            cursor = await connection.execute(
                f"""SELECT {_ITEM_COLUMNS} FROM memory.items
                    WHERE tenant_id = %s AND user_id = %s AND kind = 'turn' AND item_id > %s
                    ORDER BY item_id LIMIT %s""",
                (tenant_id, user_id, after, limit),
            )
            return [_item(row) for row in await cursor.fetchall()]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._open_lock:
            if self._pool is not None:
                await self._pool.close()

    # --- searches -------------------------------------------------------------------------

    async def _recall(
        self,
        tenant_id: str,
        user_id: str,
        conversation_id: str,
        recent_limit: int,
        query_text: str,
        query: Vectors,
        k: int,
        exclude_item_ids: Collection[str],
    ) -> tuple[list[MemoryItem], list[RecalledItem]]:
        """The recent turns and the fused ranking, all statements pipelined in one REPEATABLE
        READ transaction (one round trip; a second only when the HNSW search comes back
        short)."""
        candidates = k * self._candidates_per_result
        params: dict[str, Any] = {
            "tenant": tenant_id,
            "user": user_id,
            "owners": [user_id, ""],
            "conversation": conversation_id,
            "recent_limit": recent_limit,
            "exclude": sorted(set(exclude_item_ids)),
            "limit": candidates,
            "terms": _query_terms(query_text),
            "query": query,
            "exact_limit": self._exact_scan_limit,
            "cap": self._exact_scan_limit + 1,
            "ef_search": str(min(max(_EF_SEARCH, candidates), _MAX_EF_SEARCH)),
        }
        dense_wanted = k > 0 and bool(query.any())
        async with self._connection() as connection:
            async with connection.pipeline():
                await connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                recent = await connection.execute(_RECENT, params) if recent_limit else None
                keyword = None
                if k > 0 and params["terms"]:
                    keyword = await connection.execute(_KEYWORD, params)
                dense = None
                if dense_wanted:
                    await connection.execute(_EF_SEARCH_SQL, params)
                    dense = await connection.execute(self._dense_sql, params)
                await connection.execute("COMMIT")
            recent_items = (
                [_item(row) for row in reversed(await recent.fetchall())] if recent else []
            )
            found: dict[str, MemoryItem] = {}
            keyword_ranking = _ranking(await keyword.fetchall(), found) if keyword else []
            dense_ranking: list[str] = []
            if dense is not None:
                rows = await dense.fetchall()
                if len(rows) < candidates and (not rows or rows[0][-1]):
                    # The HNSW search came back short (its scan budget spent on rows the
                    # caller may not see), or found nothing: the exact scan instead.
                    INDEX_EXACT_FALLBACKS.inc()
                    exact = await connection.execute(self._exact_sql, params)
                    rows = await exact.fetchall()
                rows.sort(key=lambda row: (row[-2], row[3]))
                dense_ranking = _ranking(rows, found)
        fused = fuse_reciprocal_rank(keyword_ranking, dense_ranking, k, self._rrf_k)
        relevant = [
            RecalledItem(found[f.item_id], f.score, f.keyword_rank, f.dense_rank) for f in fused
        ]
        return recent_items, relevant

    # --- connections ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection (autocommit); engine trouble becomes Unavailable."""
        pool = await self._connections()
        try:
            async with pool.connection() as connection:
                yield connection
        except psycopg.OperationalError as error:
            # Unreachable, shut down, pool exhausted, deadlock or serialization failure:
            # the engine's trouble, and worth a retry.
            raise Unavailable("PostgreSQL failed a memory index call") from error

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection in a transaction, committed at the end of the block (rolled
        back on an error); engine trouble becomes Unavailable."""
        async with self._connection() as connection, connection.transaction():
            yield connection

    async def _connections(
        self,
    ) -> psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        if self._closed:
            raise Unavailable("the memory index is closed")
        if self._pool is not None:
            return self._pool
        async with self._open_lock:
            if self._closed:
                raise Unavailable("the memory index is closed")
            if self._pool is None:
                try:
                    vector_oid = await self._create_or_check()
                except psycopg.OperationalError as error:
                    raise Unavailable("PostgreSQL is unreachable (memory index)") from error
                self._pool = await self._open_pool(vector_oid)
        return self._pool

    async def _create_or_check(self) -> int:
        """Creates the schema when missing, checks it otherwise; the vector type's oid."""
        connection = await psycopg.AsyncConnection.connect(
            self._dsn, connect_timeout=max(1, round(self._timeout))
        )
        try:
            async with connection.transaction():
                await connection.execute(
                    "SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, _SCHEMA_LOCK)
                )
                vector_schema = await _extension(connection, "vector", "pgvector")
                unaccent_schema = await _extension(connection, "unaccent", "unaccent")
                cursor = await connection.execute("SELECT to_regclass('memory.meta')")
                row = await cursor.fetchone()
                if row is None or row[0] is None:
                    await connection.execute("CREATE SCHEMA IF NOT EXISTS memory")
                    ddl = _schema(vector_schema, unaccent_schema, self._dimension)
                    await connection.execute(ddl)
                    _log.info("created the memory index schema")
                else:
                    await self._check(connection)
                info = await TypeInfo.fetch(connection, f"{_ident(vector_schema)}.vector")
                if info is None:
                    raise ConfigError("the memory index: pgvector's vector type is missing")
                self._dense_sql, self._exact_sql = _dense_queries(
                    f"OPERATOR({_ident(vector_schema)}.<#>)"
                )
                return info.oid
        finally:
            await connection.close()

    async def _check(self, connection: psycopg.AsyncConnection[Any]) -> None:
        cursor = await connection.execute("SELECT key, value FROM memory.meta")
        meta = dict(await cursor.fetchall())
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise ConfigError(
                f"the memory index in schema memory has version {meta.get('schema_version')},"
                f" this code needs {SCHEMA_VERSION}"
            )
        if meta.get("dimension") != str(self._dimension):
            raise ConfigError(
                f"the memory index holds {meta.get('dimension')}-dimensional vectors, "
                f"not {self._dimension}"
            )

    async def _open_pool(
        self, vector_oid: int
    ) -> psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        dumper = type("VectorDumper", (_VectorDumper,), {"oid": vector_oid})

        async def configure(connection: psycopg.AsyncConnection[Any]) -> None:
            connection.adapters.register_dumper(np.ndarray, dumper)
            await connection.set_autocommit(True)
            # pgvector 0.8: a filtered HNSW search keeps walking the graph until it has
            # enough rows that pass the filter (or hnsw.max_scan_tuples), instead of returning
            # the few of its first ef_search candidates that do.
            await connection.execute("SET hnsw.iterative_scan = relaxed_order")

        pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] = (
            psycopg_pool.AsyncConnectionPool(
                self._dsn,
                min_size=1,
                max_size=self._max_connections,
                timeout=self._timeout,
                configure=configure,
                open=False,
                name="memory-index",
            )
        )
        await pool.open()
        return pool


async def _extension(connection: psycopg.AsyncConnection[Any], name: str, label: str) -> str:
    """Installs extension `name` when missing (a no-op where it is installed); its schema."""
    try:
        async with connection.transaction():
            await connection.execute(f"CREATE EXTENSION IF NOT EXISTS {name}")
    except (psycopg.errors.FeatureNotSupported, psycopg.errors.UndefinedFile) as error:
        raise ConfigError(
            f"the memory index needs the {label} extension, which this PostgreSQL server "
            f"does not have ({error.diag.message_primary})"
        ) from None
    except psycopg.errors.InsufficientPrivilege:
        raise ConfigError(
            f"the memory index needs the {label} extension: a superuser must run "
            f"`CREATE EXTENSION {name}` in this database (or in template1)"
        ) from None
    cursor = await connection.execute(
        "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = %s", (name,)
    )
    row = await cursor.fetchone()
    assert row is not None
    schema: str = row[0]
    return schema.strip('"')


def _item(row: Sequence[Any]) -> MemoryItem:
    """A MemoryItem from a row of _ITEM_COLUMNS."""
    tenant_id, user_id, conversation_id, item_id, kind, role, text, created_at_ms, source = row[:9]
    return MemoryItem(
        tenant_id=tenant_id,
        user_id=user_id,
        conversation_id=conversation_id,
        item_id=item_id,
        kind=ItemKind(kind),
        role=role,
        text=text,
        created_at_ms=int(created_at_ms),
        source=source,
    )


def _ranking(rows: Sequence[Sequence[Any]], found: dict[str, MemoryItem]) -> list[str]:
    """The item ids of ranked rows (starting with _ITEM_COLUMNS), in order; each item goes
    into `found`."""
    ranking: list[str] = []
    for row in rows:
        item = _item(row)
        found[item.item_id] = item
        ranking.append(item.item_id)
    return ranking

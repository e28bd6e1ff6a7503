"""Contract tests of the memory index: every implementation of chatplane.memory.index.base must
pass them. Each implementation is one entry of IMPLEMENTATIONS; the tests use only the interface
and the real sentence embedder, and give every test its own tenants so engines may be shared.
"""

from __future__ import annotations

import asyncio
import random
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import opensearchpy
import psycopg
import pytest
from prometheus_client import REGISTRY
from psycopg.conninfo import make_conninfo

from chatplane.common.errors import ConfigError, Unavailable
from chatplane.memory.embedding import SentenceEmbedder
from chatplane.memory.index.base import (
    DocumentChunk,
    DocumentSummary,
    ItemKind,
    MemoryIndex,
    MemoryItem,
    RecalledItem,
    document_item_id,
)
from chatplane.memory.index.opensearch import OpenSearchMemoryIndex
from chatplane.memory.index.postgres import PostgresMemoryIndex
from tests.engine_processes import Engines

# Opens an index over the storage the test was given; calling it again reopens the same data.
IndexOpener = Callable[[], Awaitable[MemoryIndex]]


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> IndexOpener:
    # A database of its own per test, on the session's PostgreSQL; every tenant here is small,
    # so every dense search is the exact scan.
    dsn = request.getfixturevalue("postgres_database")

    async def open_index() -> MemoryIndex:
        return PostgresMemoryIndex(dsn)

    return open_index


def _postgres_hnsw(request: pytest.FixtureRequest, tmp_path: Path) -> IndexOpener:
    # The same, with every dense search through the HNSW index (iterative scan) instead.
    dsn = request.getfixturevalue("postgres_database")

    async def open_index() -> MemoryIndex:
        return PostgresMemoryIndex(dsn, exact_scan_limit=0)

    return open_index


def _opensearch(request: pytest.FixtureRequest, tmp_path: Path) -> IndexOpener:
    # One OpenSearch index for the module (tests keep apart by tenant), on the session's engines.
    url, index = request.getfixturevalue("opensearch_memory_index")

    async def open_index() -> MemoryIndex:
        return OpenSearchMemoryIndex(url, index=index)

    return open_index


# Each entry opens an index given the test's request (for fixtures) and its tmp_path.
IMPLEMENTATIONS: dict[str, Callable[[pytest.FixtureRequest, Path], IndexOpener]] = {
    "opensearch": _opensearch,
    "postgres": _postgres,
    "postgres-hnsw": _postgres_hnsw,
}


@pytest.fixture(scope="module")
def opensearch_memory_index(engines: Engines) -> Iterator[tuple[str, str]]:
    """(URL, index name) of an OpenSearch index of its own for this module, deleted afterwards;
    the engines themselves are shared with the rest of the session and left running."""
    url = engines.env["CHATPLANE_OPENSEARCH_URL"]
    index = f"contract-memory-{uuid.uuid4().hex}"
    yield url, index
    client = opensearchpy.OpenSearch(hosts=[url])
    try:
        client.indices.delete(index=index, ignore_unavailable=True)
    finally:
        client.close()


@dataclass
class IndexUnderTest:
    """Hands out indexes over one storage and closes them all afterwards."""

    opener: IndexOpener
    opened: list[MemoryIndex] = field(default_factory=list)

    async def open(self) -> MemoryIndex:
        index = await self.opener()
        self.opened.append(index)
        return index

    async def close(self) -> None:
        for index in reversed(self.opened):
            await index.close()


@pytest.fixture(scope="session")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder()


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
async def index_under_test(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[IndexUnderTest]:
    under_test = IndexUnderTest(IMPLEMENTATIONS[request.param](request, tmp_path))
    yield under_test
    await under_test.close()


@pytest.fixture
async def memory_index(index_under_test: IndexUnderTest) -> MemoryIndex:
    return await index_under_test.open()


@pytest.fixture
def tenant() -> str:
    return f"tenant-{uuid.uuid4().hex}"


@pytest.fixture
def other_tenant() -> str:
    return f"tenant-{uuid.uuid4().hex}"


def turn(
    tenant_id: str,
    user_id: str,
    conversation_id: str,
    item_id: str,
    text: str,
    *,
    created_at_ms: int = 1_700_000_000_000,
    role: str = "user",
) -> MemoryItem:
    return MemoryItem(
        tenant_id=tenant_id,
        user_id=user_id,
        conversation_id=conversation_id,
        item_id=item_id,
        kind=ItemKind.TURN,
        role=role,
        text=text,
        created_at_ms=created_at_ms,
        source="",
    )


def document(tenant_id: str, item_id: str, text: str, source: str = "handbook.md") -> MemoryItem:
    return MemoryItem(
        tenant_id=tenant_id,
        user_id="",
        conversation_id="",
        item_id=item_id,
        kind=ItemKind.DOCUMENT,
        role="",
        text=text,
        created_at_ms=1_700_000_000_000,
        source=source,
    )


class Memory:
    """The index under test plus the embedder: store and search by text."""

    def __init__(self, index: MemoryIndex, embedder: SentenceEmbedder) -> None:
        self.index = index
        self.embedder = embedder

    async def upsert(self, *items: MemoryItem) -> None:
        await self.index.upsert(items, self.embedder.embed([item.text for item in items]))

    async def search(
        self,
        tenant_id: str,
        user_id: str,
        query: str,
        k: int = 10,
        exclude_item_ids: Sequence[str] = (),
    ) -> list[RecalledItem]:
        vector = self.embedder.embed([query])[0]
        return await self.index.search(
            tenant_id, user_id, query, vector, k, exclude_item_ids=exclude_item_ids
        )


@pytest.fixture
def memory(memory_index: MemoryIndex, embedder: SentenceEmbedder) -> Memory:
    return Memory(memory_index, embedder)


ALICE_TURNS = {
    "a-puppy": "I adopted a golden retriever puppy named Biscuit last week.",
    "a-rust": "My favourite programming language is Rust because of the borrow checker.",
    "a-passport": "Remind me to renew my passport before the trip to Japan in May.",
    "a-diet": "I am vegetarian and I cannot stand mushrooms.",
}
BOB_TURNS = {
    "b-cat": "My cat Whiskers is terrified of the vacuum cleaner.",
    "b-salary": "My salary is 91234 euros and my bank is Zorblax Credit Union.",
}
DOCUMENTS = {
    "refund:0": "Refund policy: purchases can be returned within 30 days for a full refund.",
    "password:0": "To reset your password, open Settings, choose Security, then Reset password.",
}


async def seed(memory: Memory, tenant_id: str) -> None:
    await memory.upsert(
        *(turn(tenant_id, "alice", "c1", i, text) for i, text in ALICE_TURNS.items()),
        *(turn(tenant_id, "bob", "c9", i, text) for i, text in BOB_TURNS.items()),
        *(document(tenant_id, i, text) for i, text in DOCUMENTS.items()),
    )


def ids(results: Sequence[RecalledItem]) -> list[str]:
    return [r.item.item_id for r in results]


# --- search ---------------------------------------------------------------------------------


async def test_search_finds_by_keyword(memory: Memory, tenant: str) -> None:
    await seed(memory, tenant)
    results = await memory.search(tenant, "alice", "Biscuit")
    assert results[0].item.item_id == "a-puppy"
    assert results[0].keyword_rank == 1


async def test_search_finds_by_meaning(memory: Memory, tenant: str) -> None:
    await seed(memory, tenant)
    # No word in common with the stored turn: only the dense ranking can find it.
    results = await memory.search(tenant, "alice", "Which dog breed did I get?")
    assert results[0].item.item_id == "a-puppy"
    assert results[0].dense_rank == 1
    results = await memory.search(tenant, "alice", "coding", k=3)
    assert "a-rust" in ids(results)


async def test_hybrid_ranks_an_item_matching_both_first(memory: Memory, tenant: str) -> None:
    await seed(memory, tenant)
    results = await memory.search(tenant, "alice", "how do I reset my password")
    first = results[0]
    assert first.item.item_id == "password:0"
    assert first.keyword_rank is not None
    assert first.dense_rank is not None
    assert all(first.score > other.score for other in results[1:])
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)


async def test_search_returns_the_whole_item(memory: Memory, tenant: str) -> None:
    await seed(memory, tenant)
    results = await memory.search(tenant, "alice", "refund policy", k=1)
    assert results[0].item == document(tenant, "refund:0", DOCUMENTS["refund:0"])
    results = await memory.search(tenant, "alice", "passport renewal Japan", k=1)
    assert results[0].item == turn(tenant, "alice", "c1", "a-passport", ALICE_TURNS["a-passport"])


async def test_search_returns_at_most_k(memory: Memory, tenant: str) -> None:
    await seed(memory, tenant)
    assert len(await memory.search(tenant, "alice", "my", k=2)) == 2
    assert await memory.search(tenant, "alice", "my", k=0) == []
    visible = len(ALICE_TURNS) + len(DOCUMENTS)
    assert len(await memory.search(tenant, "alice", "my", k=50)) == visible


async def test_tenant_isolation(memory: Memory, tenant: str, other_tenant: str) -> None:
    await seed(memory, tenant)
    # Same user ids and item ids in the other tenant: only the tenant may separate them.
    secret = "Project Nightingale launch code is 7-7-ALPHA-ZULU"
    await memory.upsert(
        turn(other_tenant, "alice", "c1", "a-puppy", secret),
        turn(other_tenant, "alice", "c1", "other-only", secret),
        document(other_tenant, "refund:0", secret),
        document(other_tenant, "other-doc", secret),
    )
    for query in (secret, "Nightingale", "launch code", ALICE_TURNS["a-puppy"], ""):
        results = await memory.search(tenant, "alice", query, k=50)
        assert all(r.item.tenant_id == tenant for r in results)
        assert all(secret != r.item.text for r in results)
    results = await memory.search(other_tenant, "alice", secret, k=50)
    assert sorted(ids(results)) == ["a-puppy", "other-doc", "other-only", "refund:0"]
    assert all(r.item.tenant_id == other_tenant for r in results)


async def test_empty_tenant_finds_nothing(memory: Memory, tenant: str, other_tenant: str) -> None:
    await seed(memory, other_tenant)
    assert await memory.search(tenant, "alice", ALICE_TURNS["a-puppy"], k=50) == []


async def test_user_isolation_for_turns(memory: Memory, tenant: str) -> None:
    await seed(memory, tenant)
    for query in (BOB_TURNS["b-salary"], "Zorblax", "Whiskers cat", "salary euros bank"):
        results = await memory.search(tenant, "alice", query, k=50)
        turns = [r.item for r in results if r.item.kind is ItemKind.TURN]
        assert all(item.user_id == "alice" for item in turns)
        assert not set(ids(results)) & set(BOB_TURNS)
    results = await memory.search(tenant, "bob", "Zorblax", k=1)
    assert ids(results) == ["b-salary"]
    # A user that has no turns sees only the tenant's documents.
    results = await memory.search(tenant, "carol", BOB_TURNS["b-salary"], k=50)
    assert sorted(ids(results)) == sorted(DOCUMENTS)


@pytest.mark.parametrize("k", [1, 2, 3])
async def test_invisible_items_do_not_crowd_out_visible_ones(
    memory: Memory, tenant: str, other_tenant: str, k: int
) -> None:
    await seed(memory, tenant)
    await seed(memory, other_tenant)
    # The query is closest to items the caller may not see; k visible ones must still come.
    for user, visible in (("carol", len(DOCUMENTS)), ("alice", len(DOCUMENTS) + len(ALICE_TURNS))):
        for query in BOB_TURNS.values():
            results = await memory.search(tenant, user, query, k=k)
            assert len(results) == min(k, visible)


async def test_documents_are_shared_within_the_tenant(memory: Memory, tenant: str) -> None:
    await seed(memory, tenant)
    for user in ("alice", "bob", "someone-new"):
        results = await memory.search(tenant, user, "refund within 30 days", k=1)
        assert ids(results) == ["refund:0"]
        assert results[0].item.kind is ItemKind.DOCUMENT


async def test_exclude_item_ids(memory: Memory, tenant: str) -> None:
    await seed(memory, tenant)
    results = await memory.search(tenant, "alice", "Biscuit the golden retriever puppy", k=50)
    assert ids(results)[0] == "a-puppy"
    excluded = ["a-puppy", "refund:0", "b-cat", "no-such-item"]
    results = await memory.search(
        tenant, "alice", "Biscuit the golden retriever puppy", k=50, exclude_item_ids=excluded
    )
    assert not set(ids(results)) & set(excluded)
    assert len(results) == len(ALICE_TURNS) + len(DOCUMENTS) - 2


async def test_upsert_is_idempotent(memory: Memory, tenant: str) -> None:
    item = turn(tenant, "alice", "c1", "m1", "The wifi password for the cabin is hunter2")
    await memory.upsert(item)
    await memory.upsert(item)
    await memory.upsert(item, item)
    results = await memory.search(tenant, "alice", "cabin wifi password", k=10)
    assert ids(results) == ["m1"]
    assert await memory.index.recent(tenant, "alice", "c1", 10) == [item]


async def test_upsert_again_replaces_the_item(memory: Memory, tenant: str) -> None:
    await memory.upsert(turn(tenant, "alice", "c1", "m1", "partial answer about volcanoes"))
    final = turn(tenant, "alice", "c1", "m1", "complete answer about glaciers", role="assistant")
    await memory.upsert(final)
    results = await memory.search(tenant, "alice", "glaciers", k=10)
    assert [r.item for r in results] == [final]
    assert results[0].keyword_rank == 1
    results = await memory.search(tenant, "alice", "volcanoes", k=10)
    assert all(r.keyword_rank is None for r in results)


async def test_item_ids_never_collide_across_tenants(memory: Memory) -> None:
    # A store keyed by "<tenant>:<item>" must not let tenant "x:y" item "z" and tenant "x"
    # item "y:z" overwrite each other.
    base = f"tenant-{uuid.uuid4().hex}"
    first = turn(f"{base}:y", "alice", "c1", "z", "the first tenant's turn about kayaks")
    second = turn(base, "alice", "c1", "y:z", "the second tenant's turn about kayaks")
    await memory.upsert(first)
    await memory.upsert(second)
    assert await memory.index.recent(f"{base}:y", "alice", "c1", 10) == [first]
    assert await memory.index.recent(base, "alice", "c1", 10) == [second]
    assert [r.item for r in await memory.search(base, "alice", "kayaks")] == [second]


async def test_upsert_checks_vector_shapes(memory_index: MemoryIndex, tenant: str) -> None:
    items = [turn(tenant, "alice", "c1", "m1", "hello")]
    with pytest.raises(ValueError, match="vectors"):
        await memory_index.upsert(items, np.zeros((2, 384), dtype=np.float32))
    with pytest.raises(ValueError, match="384"):
        await memory_index.upsert(items, np.zeros((1, 12), dtype=np.float32))
    await memory_index.upsert([], np.zeros((0, 384), dtype=np.float32))


@pytest.mark.parametrize(
    "query",
    [
        "",
        "   ",
        '"',
        '""',
        '"unbalanced quote',
        "*",
        "pass*",
        "NEAR(",
        "NEAR(reset password, 2)",
        "-",
        "-password",
        ":",
        "text: password",
        "scope: anything",
        "{text scope}: reset",
        "AND",
        "reset AND OR NOT password",
        "(((",
        ")",
        "^reset",
        "+",
        "reset_password",
        "_",
        "'; DROP TABLE items; --",
        "\x00",
        "café crème brûlée",
        "東京の天気",
        "🙂🚀",
        "pass\u0301word",
        "x" * 5000,
        " ".join(f"word{i}" for i in range(500)),
    ],
)
async def test_any_query_text_is_accepted(memory: Memory, tenant: str, query: str) -> None:
    await seed(memory, tenant)
    results = await memory.search(tenant, "alice", query, k=5)
    assert len(results) <= 5
    assert all(r.item.tenant_id == tenant for r in results)
    assert not set(ids(results)) & set(BOB_TURNS)


async def test_random_query_text_is_accepted(memory: Memory, tenant: str) -> None:
    await seed(memory, tenant)
    punctuation = "\"*:-+^(){}[],.;'\\/_~!?@#$%&|<>=`\x00 \t\n"
    words = ["NEAR", "AND", "OR", "NOT", "text", "scope", "passw", "é", "\u0301", "東", "🙂"]
    alphabet = [*punctuation, *words]
    generator = random.Random(20240601)
    for _ in range(100):
        query = "".join(generator.choices(alphabet, k=generator.randint(1, 12)))
        results = await memory.search(tenant, "alice", query, k=3)
        assert len(results) <= 3


async def test_special_characters_in_stored_text(memory: Memory, tenant: str) -> None:
    text = 'He said "NEAR(x, y)" -- then: *wildcards* and {braces} ^caret café 東京'
    await memory.upsert(turn(tenant, "alice", "c1", "m1", text))
    for query in ("wildcards", "NEAR", "cafe", "東京", "braces caret"):
        results = await memory.search(tenant, "alice", query, k=1)
        assert ids(results) == ["m1"]
        assert results[0].keyword_rank == 1, query


async def test_zero_query_vector_still_searches_keywords(memory: Memory, tenant: str) -> None:
    await seed(memory, tenant)
    zero = np.zeros(memory.embedder.dimension, dtype=np.float32)
    results = await memory.index.search(tenant, "alice", "Biscuit", zero, 5)
    assert ids(results)[:1] == ["a-puppy"]


# --- recent ---------------------------------------------------------------------------------


async def test_recent_is_the_newest_turns_oldest_first(memory: Memory, tenant: str) -> None:
    items = [
        turn(tenant, "alice", "c1", f"m{i}", f"message {i}", created_at_ms=1_000 + i)
        for i in range(10)
    ]
    # Stored out of order: the order comes from created_at_ms, not from arrival.
    await memory.upsert(*items[5:], *items[:5])
    assert await memory.index.recent(tenant, "alice", "c1", 3) == items[7:]
    assert await memory.index.recent(tenant, "alice", "c1", 100) == items
    assert await memory.index.recent(tenant, "alice", "c1", 0) == []


async def test_recent_is_scoped(memory: Memory, tenant: str, other_tenant: str) -> None:
    mine = turn(tenant, "alice", "c1", "mine", "mine", created_at_ms=1)
    await memory.upsert(
        mine,
        turn(tenant, "alice", "c2", "other-conversation", "x", created_at_ms=2),
        turn(tenant, "bob", "c1", "other-user", "x", created_at_ms=3),
        document(tenant, "a-document", "x"),
    )
    await memory.upsert(turn(other_tenant, "alice", "c1", "other-tenant", "x", created_at_ms=4))
    assert await memory.index.recent(tenant, "alice", "c1", 10) == [mine]
    assert await memory.index.recent(tenant, "alice", "nope", 10) == []
    assert await memory.index.recent(tenant, "", "", 10) == []


# --- recall (recent + search in one call) ------------------------------------------------------


@pytest.mark.parametrize(("recent_limit", "k"), [(1, 1), (3, 2), (8, 10), (20, 3)])
async def test_recall_is_recent_then_search_without_them(
    memory: Memory, tenant: str, other_tenant: str, recent_limit: int, k: int
) -> None:
    # The conversation's newest turns are also the best hits, so dropping them changes which
    # candidates remain (an index that answers both at once must search deeper to match).
    dogs = [
        turn(
            tenant,
            "alice",
            "c1",
            f"dog-{i}",
            f"my dog number {i} loves long walks",
            created_at_ms=1_800_000_000_000 + i,
        )
        for i in range(12)
    ]
    await seed(memory, tenant)
    await memory.upsert(*dogs, turn(tenant, "alice", "c2", "dog-elsewhere", "a dog walk"))
    await memory.upsert(turn(other_tenant, "alice", "c1", "dog-other", "my dog loves walks"))
    query = "dog walks"
    vector = memory.embedder.embed([query])[0]
    recent, relevant = await memory.index.recall(
        tenant, "alice", "c1", recent_limit, query, vector, k
    )
    expected_recent = await memory.index.recent(tenant, "alice", "c1", recent_limit)
    expected = await memory.index.search(
        tenant, "alice", query, vector, k, exclude_item_ids=[i.item_id for i in expected_recent]
    )
    assert recent == expected_recent
    assert recent[-min(recent_limit, len(dogs)) :] == dogs[-recent_limit:]
    assert [(r.item, r.keyword_rank, r.dense_rank) for r in relevant] == [
        (r.item, r.keyword_rank, r.dense_rank) for r in expected
    ]
    assert len(relevant) == k
    assert not {r.item.item_id for r in relevant} & {i.item_id for i in recent}


# --- delete_conversation ----------------------------------------------------------------------


async def test_delete_conversation(memory: Memory, tenant: str, other_tenant: str) -> None:
    await seed(memory, tenant)
    await memory.upsert(
        turn(tenant, "alice", "c2", "a-other", "Biscuit chewed my shoes"),
        turn(tenant, "bob", "c1", "b-same-id", "Biscuit is a biscuit"),
        turn(other_tenant, "alice", "c1", "t2", "Biscuit again"),
    )
    assert await memory.index.delete_conversation(tenant, "alice", "c1") == len(ALICE_TURNS)
    assert await memory.index.recent(tenant, "alice", "c1", 10) == []
    results = await memory.search(tenant, "alice", "Biscuit golden retriever puppy", k=50)
    assert not set(ids(results)) & set(ALICE_TURNS)
    assert "a-other" in ids(results)
    assert set(DOCUMENTS) <= set(ids(results))
    # Other users' and other tenants' conversations with the same id are untouched.
    assert len(await memory.index.recent(tenant, "bob", "c1", 10)) == 1
    assert len(await memory.index.recent(other_tenant, "alice", "c1", 10)) == 1
    assert await memory.index.delete_conversation(tenant, "alice", "c1") == 0


async def test_delete_never_touches_documents(memory: Memory, tenant: str) -> None:
    await seed(memory, tenant)
    assert await memory.index.delete_conversation(tenant, "", "") == 0
    results = await memory.search(tenant, "someone", "refund", k=50)
    assert sorted(ids(results)) == sorted(DOCUMENTS)


async def test_deleted_conversation_stays_forgotten(
    memory: Memory, tenant: str, other_tenant: str
) -> None:
    # A late upsert (a turn indexed from the log after the delete) must not bring a deleted
    # conversation back.
    item = turn(tenant, "alice", "c1", "m1", "tulips bloom in April")
    await memory.upsert(item)
    assert await memory.index.delete_conversation(tenant, "alice", "c1") == 1
    await memory.upsert(item, turn(tenant, "alice", "c1", "m2", "tulips again"))
    assert await memory.index.recent(tenant, "alice", "c1", 10) == []
    assert await memory.search(tenant, "alice", "tulips", k=5) == []
    # Only that conversation of that user of that tenant: the rest is stored as usual.
    others = [
        turn(tenant, "alice", "c2", "m3", "tulips in another conversation"),
        turn(tenant, "bob", "c1", "m4", "tulips of another user"),
        turn(other_tenant, "alice", "c1", "m1", "tulips of another tenant"),
    ]
    await memory.upsert(*others)
    assert await memory.index.recent(tenant, "alice", "c2", 10) == [others[0]]
    assert await memory.index.recent(tenant, "bob", "c1", 10) == [others[1]]
    assert await memory.index.recent(other_tenant, "alice", "c1", 10) == [others[2]]
    # Documents are never forgotten with a conversation.
    await memory.upsert(document(tenant, "tulips:0", "Tulips need cold winters."))
    assert sorted(ids(await memory.search(tenant, "alice", "tulips", k=5))) == ["m3", "tulips:0"]
    assert await memory.index.delete_conversation(tenant, "alice", "c1") == 0


async def test_upserts_racing_a_delete_never_survive_it(memory: Memory, tenant: str) -> None:
    items = [turn(tenant, "alice", "c1", f"m{i}", f"note {i}", created_at_ms=i) for i in range(20)]
    vectors = memory.embedder.embed([item.text for item in items])
    writes = [memory.index.upsert([item], vectors[i : i + 1]) for i, item in enumerate(items)]
    await asyncio.gather(
        *writes[:10], memory.index.delete_conversation(tenant, "alice", "c1"), *writes[10:]
    )
    assert await memory.index.recent(tenant, "alice", "c1", 100) == []


# --- documents (rag) ------------------------------------------------------------------------


def chunk(
    tenant_id: str, document_id: str, index: int, text: str, *, at: int, name: str
) -> MemoryItem:
    return MemoryItem(
        tenant_id=tenant_id,
        user_id="",
        conversation_id="",
        item_id=document_item_id(document_id, index),
        kind=ItemKind.DOCUMENT,
        role="",
        text=text,
        created_at_ms=at,
        source=name,
    )


async def test_list_documents_groups_chunks_newest_first(
    memory: Memory, tenant: str, other_tenant: str
) -> None:
    await memory.upsert(
        chunk(tenant, "doc-old", 0, "Refunds take 30 days.", at=1_000, name="refunds.md"),
        chunk(tenant, "doc-old", 1, "Refunds go to the card.", at=1_000, name="refunds.md"),
        chunk(tenant, "doc-new", 0, "Passwords reset in Settings.", at=2_000, name="faq.pdf"),
        chunk(other_tenant, "doc-x", 0, "Another tenant's secret.", at=3_000, name="x.txt"),
        turn(tenant, "alice", "c1", "m1", "a turn is not a document"),
    )
    listed = await memory.index.list_documents(tenant)
    assert listed == [
        DocumentSummary("doc-new", "faq.pdf", 1, 2_000),
        DocumentSummary("doc-old", "refunds.md", 2, 1_000),
    ]
    assert [d.document_id for d in await memory.index.list_documents(other_tenant)] == ["doc-x"]
    assert await memory.index.list_documents(f"{tenant}-nobody") == []


async def test_delete_document_removes_only_its_chunks(
    memory: Memory, tenant: str, other_tenant: str
) -> None:
    await memory.upsert(
        chunk(tenant, "doc-a", 0, "Zebras are striped.", at=1, name="a.md"),
        chunk(tenant, "doc-a", 1, "Zebras live in Africa.", at=1, name="a.md"),
        chunk(tenant, "doc-a:b", 0, "Zebra crossings are for people.", at=1, name="ab.md"),
        chunk(tenant, "doc-ab", 0, "Zebra finches sing.", at=1, name="ab2.md"),
        chunk(other_tenant, "doc-a", 0, "Zebras of another tenant.", at=1, name="a.md"),
    )
    # Another tenant's id deletes nothing; then the tenant's own: every chunk, nothing else.
    assert await memory.index.delete_document(f"{tenant}-other", "doc-a") == 0
    assert await memory.index.delete_document(tenant, "doc-a") == 2
    assert await memory.index.delete_document(tenant, "doc-a") == 0
    found = ids(await memory.search(tenant, "alice", "zebra", k=10))
    assert sorted(found) == ["doc-a:b:0", "doc-ab:0"]
    assert ids(await memory.search(other_tenant, "alice", "zebra", k=10)) == ["doc-a:0"]
    assert {d.document_id for d in await memory.index.list_documents(tenant)} == {
        "doc-a:b",
        "doc-ab",
    }


async def test_document_chunk_is_the_whole_chunk_with_its_place(
    memory: Memory, tenant: str, other_tenant: str
) -> None:
    long_text = "Ferries to Glimmerbrook. " * 60  # over a citation's 200-character excerpt
    await memory.upsert(
        chunk(tenant, "doc-f", 0, "Timetable of the ferries.", at=1, name="ferry.pdf"),
        chunk(tenant, "doc-f", 1, long_text, at=1, name="ferry.pdf"),
        chunk(tenant, "doc-f", 2, "Fares are paid on board.", at=1, name="ferry.pdf"),
        chunk(tenant, "doc-f:1", 0, "A document whose id has a colon.", at=1, name="c.md"),
        chunk(tenant, "doc-", 0, "A document whose id is a prefix.", at=1, name="p.md"),
        chunk(other_tenant, "doc-f", 1, "Another tenant's secret chunk.", at=1, name="x.pdf"),
        turn(tenant, "alice", "doc-f", "doc-f:3", "a turn is never a document's chunk"),
    )
    index = memory.index
    assert await index.document_chunk(tenant, "doc-f", 1) == DocumentChunk(
        "doc-f", "ferry.pdf", 1, 3, long_text
    )
    assert await index.document_chunk(tenant, "doc-f", 0) == DocumentChunk(
        "doc-f", "ferry.pdf", 0, 3, "Timetable of the ferries."
    )
    assert await index.document_chunk(tenant, "doc-f:1", 0) == DocumentChunk(
        "doc-f:1", "c.md", 0, 1, "A document whose id has a colon."
    )
    # Each tenant reads its own; no such chunk, document or tenant: None, never another's.
    assert await index.document_chunk(other_tenant, "doc-f", 1) == DocumentChunk(
        "doc-f", "x.pdf", 1, 1, "Another tenant's secret chunk."
    )
    assert await index.document_chunk(other_tenant, "doc-f", 0) is None
    assert await index.document_chunk(f"{tenant}-nobody", "doc-f", 1) is None
    assert await index.document_chunk(tenant, "doc-f", 3) is None  # a turn's item id
    assert await index.document_chunk(tenant, "doc-f", -1) is None
    assert await index.document_chunk(tenant, "doc", 0) is None
    assert await index.document_chunk(tenant, "", 0) is None
    # Deleted with its document.
    assert await index.delete_document(tenant, "doc-f") == 3
    assert await index.document_chunk(tenant, "doc-f", 1) is None
    assert (await index.document_chunk(tenant, "doc-", 0)) is not None


async def test_delete_document_after_upserts_that_returned(memory: Memory, tenant: str) -> None:
    items = [chunk(tenant, "doc-r", i, f"race note {i}", at=i, name="r.md") for i in range(30)]
    await memory.upsert(*items)
    assert await memory.index.delete_document(tenant, "doc-r") == 30
    assert await memory.search(tenant, "alice", "race note", k=10) == []
    assert await memory.index.list_documents(tenant) == []


# --- lifecycle ------------------------------------------------------------------------------


async def test_persists_across_close_and_reopen(
    index_under_test: IndexUnderTest, embedder: SentenceEmbedder, tenant: str
) -> None:
    first = Memory(await index_under_test.open(), embedder)
    await seed(first, tenant)
    await first.index.delete_conversation(tenant, "bob", "c9")
    await first.index.close()

    second = Memory(await index_under_test.open(), embedder)
    results = await second.search(tenant, "alice", "Biscuit", k=1)
    assert ids(results) == ["a-puppy"]
    assert results[0].keyword_rank == 1
    assert results[0].dense_rank == 1
    assert len(await second.index.recent(tenant, "alice", "c1", 10)) == len(ALICE_TURNS)
    assert await second.index.recent(tenant, "bob", "c9", 10) == []
    await second.upsert(turn(tenant, "alice", "c1", "later", "a new turn about Biscuit"))
    assert "later" in ids(await second.search(tenant, "alice", "Biscuit", k=5))


async def test_closed_index_is_unavailable(memory: Memory, tenant: str) -> None:
    await memory.index.close()
    await memory.index.close()
    with pytest.raises(Unavailable):
        await memory.index.recent(tenant, "alice", "c1", 10)
    with pytest.raises(Unavailable):
        await memory.search(tenant, "alice", "anything")


async def test_concurrent_calls(memory: Memory, tenant: str) -> None:
    await seed(memory, tenant)
    vectors = memory.embedder.embed([f"note number {i} about gardening" for i in range(20)])

    async def write(i: int) -> None:
        text = f"note number {i} about gardening"
        item = turn(tenant, "alice", "c2", f"n{i}", text, created_at_ms=i)
        await memory.index.upsert([item], vectors[i : i + 1])

    async def read() -> list[RecalledItem]:
        return await memory.search(tenant, "alice", "Biscuit", k=3)

    outcomes = await asyncio.gather(*(write(i) for i in range(20)), *(read() for _ in range(20)))
    assert all(isinstance(o, list) and o and o[0].item.item_id == "a-puppy" for o in outcomes[20:])
    assert len(await memory.index.recent(tenant, "alice", "c2", 100)) == 20


# --- OpenSearch only --------------------------------------------------------------------------


async def test_opensearch_unreachable_is_unavailable(
    embedder: SentenceEmbedder, tenant: str
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    index = OpenSearchMemoryIndex(f"http://127.0.0.1:{port}", index="nowhere", request_timeout=2)
    memory = Memory(index, embedder)
    try:
        with pytest.raises(Unavailable):
            await memory.search(tenant, "alice", "anything")
        with pytest.raises(Unavailable):
            await memory.upsert(turn(tenant, "alice", "c1", "m1", "hello"))
        with pytest.raises(Unavailable):
            await index.recent(tenant, "alice", "c1", 10)
        with pytest.raises(Unavailable):
            await index.delete_conversation(tenant, "alice", "c1")
    finally:
        await index.close()


async def test_opensearch_refuses_an_index_of_another_shape(
    opensearch_memory_index: tuple[str, str], tenant: str
) -> None:
    url, index = opensearch_memory_index
    wrong = OpenSearchMemoryIndex(url, index=index, dimension=12)
    try:
        await OpenSearchMemoryIndex(url, index=index).ensure_index()
        with pytest.raises(RuntimeError, match="12-dimensional"):
            await wrong.recent(tenant, "alice", "c1", 10)
    finally:
        await wrong.close()


async def test_opensearch_coalesces_concurrent_upserts(
    opensearch_memory_index: tuple[str, str],
    embedder: SentenceEmbedder,
    tenant: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, name = opensearch_memory_index
    index = OpenSearchMemoryIndex(url, index=name, batch_window_seconds=0.005)
    bulk_sizes: list[int] = []
    send = index._bulk

    def counting_bulk(lines: list[dict[str, object]]) -> dict[str, object]:
        bulk_sizes.append(len(lines) // 2)
        return send(lines)

    monkeypatch.setattr(index, "_bulk", counting_bulk)
    items = [turn(tenant, "alice", "c1", f"m{i}", f"note {i}", created_at_ms=i) for i in range(30)]
    vectors = embedder.embed([item.text for item in items])
    try:
        await index.ensure_index()
        await asyncio.gather(
            *(index.upsert([item], vectors[i : i + 1]) for i, item in enumerate(items))
        )
        assert sum(bulk_sizes) == len(items)
        assert len(bulk_sizes) <= 3, bulk_sizes
        # Each upsert returned only once its item was searchable.
        assert await index.recent(tenant, "alice", "c1", 100) == items
    finally:
        await index.close()


async def test_user_turns_pages_one_users_turns_in_item_id_order(
    memory: Memory, tenant: str, other_tenant: str
) -> None:
    """An export's read (docs/privacy.md): that user's turns as stored, nothing else."""
    await seed(memory, tenant)
    await memory.upsert(turn(other_tenant, "alice", "c1", "a-other", "elsewhere"))
    pages, after = [], ""
    while True:
        page = await memory.index.user_turns(tenant, "alice", limit=3, after=after)
        pages.append(page)
        if len(page) < 3:
            break
        after = page[-1].item_id
    items = [item for page in pages for item in page]
    assert [item.item_id for item in items] == sorted(ALICE_TURNS)
    assert {item.item_id: item.text for item in items} == ALICE_TURNS
    assert all(
        (i.tenant_id, i.user_id, i.conversation_id) == (tenant, "alice", "c1") for i in items
    )
    assert await memory.index.user_turns(tenant, "nobody", limit=10) == []
    assert await memory.index.user_turns(tenant, "alice", limit=0) == []


async def test_erase_user_deletes_every_turn_of_the_user_only(
    memory: Memory, tenant: str, other_tenant: str
) -> None:
    await seed(memory, tenant)
    await memory.upsert(
        turn(tenant, "alice", "c2", "a-other", "Biscuit chewed my shoes"),
        turn(tenant, "bob", "c1", "b-same-id", "Biscuit is a biscuit"),
        turn(other_tenant, "alice", "c1", "t2", "Biscuit again"),
    )
    assert await memory.index.erase_user(tenant, "alice") == len(ALICE_TURNS) + 1
    for conversation in ("c1", "c2"):
        assert await memory.index.recent(tenant, "alice", conversation, 10) == []
    results = await memory.search(tenant, "alice", "Biscuit golden retriever puppy shoes", k=50)
    assert sorted(ids(results)) == sorted(DOCUMENTS)
    # Another user, another tenant, and the tenant's documents are untouched.
    assert len(await memory.index.recent(tenant, "bob", "c1", 10)) == 1
    assert len(await memory.index.recent(other_tenant, "alice", "c1", 10)) == 1
    assert await memory.index.erase_user(tenant, "alice") == 0
    assert await memory.index.erase_user(tenant, "") == 0


# --- PostgreSQL only --------------------------------------------------------------------------


async def test_postgres_unreachable_is_unavailable(embedder: SentenceEmbedder, tenant: str) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    index = PostgresMemoryIndex(f"postgresql://chatplane@127.0.0.1:{port}/nowhere")
    memory = Memory(index, embedder)
    try:
        with pytest.raises(Unavailable):
            await memory.search(tenant, "alice", "anything")
        with pytest.raises(Unavailable):
            await memory.upsert(turn(tenant, "alice", "c1", "m1", "hello"))
        with pytest.raises(Unavailable):
            await index.recent(tenant, "alice", "c1", 10)
        with pytest.raises(Unavailable):
            await index.delete_conversation(tenant, "alice", "c1")
    finally:
        await index.close()


async def test_postgres_without_pgvector_is_a_config_error(postgres_server: Engines) -> None:
    # template0 has no pgvector, and the test role is no superuser: it cannot install it.
    maintenance = postgres_server.env["CHATPLANE_POSTGRES_DSN"]
    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(maintenance, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    index = PostgresMemoryIndex(make_conninfo(maintenance, dbname=name))
    try:
        with pytest.raises(ConfigError, match="pgvector") as raised:
            await index.open()
        assert "\n" not in str(raised.value)
    finally:
        await index.close()
        with psycopg.connect(maintenance, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_postgres_refuses_an_index_of_another_dimension(postgres_database: str) -> None:
    async with PostgresMemoryIndex(postgres_database) as index:
        await index.open()
    wrong = PostgresMemoryIndex(postgres_database, dimension=12)
    try:
        with pytest.raises(ConfigError, match="384-dimensional vectors, not 12"):
            await wrong.recent("t", "alice", "c1", 10)
    finally:
        await wrong.close()


async def test_postgres_schema_is_created_once_by_concurrent_openers(
    postgres_database: str, embedder: SentenceEmbedder, tenant: str
) -> None:
    indexes = [PostgresMemoryIndex(postgres_database) for _ in range(4)]
    try:
        await asyncio.gather(*(index.open() for index in indexes))
        await Memory(indexes[0], embedder).upsert(turn(tenant, "alice", "c1", "m1", "hello"))
        for index in indexes:
            assert [item.item_id for item in await index.recent(tenant, "alice", "c1", 5)] == ["m1"]
    finally:
        for index in indexes:
            await index.close()


def _exact_fallbacks() -> float:
    return REGISTRY.get_sample_value("chatplane_memory_index_exact_fallbacks_total") or 0.0


async def test_postgres_hnsw_search_fills_k_for_a_small_tenant_in_a_big_table(
    postgres_database: str, tenant: str, other_tenant: str
) -> None:
    # 3,000 rows of another tenant lie nearer the query than any of the tenant's 40: a filtered
    # HNSW search that stopped at its first ef_search candidates would find none of them. The
    # iterative scan must find k of them itself, without the exact scan to fall back on.
    generator = np.random.default_rng(7)
    query = generator.standard_normal(384).astype(np.float32)
    query /= np.linalg.norm(query)
    crowd = query + 0.3 * generator.standard_normal((3000, 384)).astype(np.float32)
    mine = generator.standard_normal((40, 384)).astype(np.float32)
    crowd_items = [document(other_tenant, f"crowd-{i}:0", "crowd") for i in range(3000)]
    my_items = [document(tenant, f"mine-{i}:0", "mine") for i in range(40)]
    approximate = PostgresMemoryIndex(
        postgres_database, exact_scan_limit=0, candidates_per_result=1
    )
    exact = PostgresMemoryIndex(postgres_database, candidates_per_result=1)
    try:
        for start in range(0, 3000, 500):
            await approximate.upsert(crowd_items[start : start + 500], crowd[start : start + 500])
        await approximate.upsert(my_items, mine)
        fallbacks = _exact_fallbacks()
        for k in (1, 5, 10, 20):
            found = await approximate.search(tenant, "alice", "", query, k)
            assert len(found) == k
            assert {r.item.tenant_id for r in found} == {tenant}
            truth = await exact.search(tenant, "alice", "", query, k)
            overlap = {r.item.item_id for r in found} & {r.item.item_id for r in truth}
            assert len(overlap) >= 0.8 * k
        assert _exact_fallbacks() == fallbacks
        # A tenant with fewer visible rows than wanted: the HNSW scan is short, the exact scan
        # answers, and every row comes back.
        found = await approximate.search(tenant, "alice", "", query, 60)
        assert len(found) == 40
        assert _exact_fallbacks() == fallbacks + 1
    finally:
        await approximate.close()
        await exact.close()


async def test_indexed_item_ids_names_the_tenants_stored_items_only(
    memory: Memory, tenant: str
) -> None:
    await seed(memory, tenant)
    asked = ["a-puppy", "b-cat", "refund:0", "never-stored"]
    assert await memory.index.indexed_item_ids(tenant, asked) == {"a-puppy", "b-cat", "refund:0"}
    assert await memory.index.indexed_item_ids(f"{tenant}-other", asked) == set()
    assert await memory.index.indexed_item_ids(tenant, []) == set()

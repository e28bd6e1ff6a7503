"""Memory recall benchmark (cluster profile): OpenSearch (k-NN plugin, Lucene HNSW) and Kafka (the
cluster memory process indexes turns from its messages topic) started by `scripts/infra/engines.py
up --only opensearch,kafka,postgres` into a temporary state dir, 100,000 turns bulk-loaded into the
memory index with precomputed embeddings, and the real MemoryService process
(CHATPLANE_PROFILE=cluster) in front of it. It measures (a) Recall latency for k=10 through
MemoryService at concurrency 1 and 4 (and, to split the cost, the index's own search from this
process and Remember), (b) recall@10 of the k-NN (HNSW) search against exact scoring (`script_score`
with the k-NN plugin's `knn_score`) over the same data, and (c) hybrid vs BM25-only vs dense-only
retrieval quality on the labelled set in tests/data/recall_questions.json, on the embedded profile's
index (PostgreSQL: pgvector + full-text search, on the same engines script's PostgreSQL) and on
OpenSearch.

The corpus: every turn is two sentences of a pool of a few thousand distinct template sentences
(each embedded once with the real model), its vector the normalised sum of the two sentences'
vectors; every unordered pair is used at most once, so no two turns share a vector. Queries are
held-out sentences of the same pool."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import opensearchpy

from bench.harness import Options, progress
from bench.monitor import PhaseUsage, ProcessMonitor
from bench.report import Row, Target
from bench.stats import ns_to_ms, percentile
from chatplane.internal.v1 import memory_pb2, memory_pb2_grpc
from chatplane.launcher.stack import ServiceProcess
from chatplane.memory.embedding import SentenceEmbedder
from chatplane.memory.index.base import ItemKind, MemoryIndex, MemoryItem
from chatplane.memory.index.opensearch import (
    OpenSearchMemoryIndex,
    document_id,
    document_source,
    visibility_filter,
)
from chatplane.memory.index.postgres import PostgresMemoryIndex
from chatplane.v1 import resources_pb2

NAME = "recall"
TITLE = "memory recall: MemoryService on OpenSearch 3.6 k-NN (Lucene HNSW) + BM25, cluster profile"

REPO = Path(__file__).resolve().parents[1]
ENGINES_PY = REPO / "scripts" / "infra" / "engines.py"
QUESTIONS_PATH = REPO / "tests" / "data" / "recall_questions.json"
MEMORY_INDEX = "bench-memory"
QUALITY_INDEX = "bench-quality"
TOP_K = 10
RECENT_LIMIT = 8
CONCURRENCY = 4
# The knn query of OpenSearchMemoryIndex.search asks for 4k candidates (candidates_per_result).
SEARCH_CANDIDATES = 4 * TOP_K
CALL_TIMEOUT_SECONDS = 10.0
WARMUP_REQUESTS = 40
JVM_WARMUP_SEARCHES = 300
BULK_DOCS = 1000
# Vector components are sent with 5 decimals: 3.6 KB of JSON per turn instead of 8.5 KB, and a
# cosine error below 1e-5; the exact search scores the same stored vectors.
VECTOR_DECIMALS = 5
SEED = 20240611


@dataclass(frozen=True, slots=True)
class Scale:
    """How big one run is."""

    tenants: int
    users_per_tenant: int
    turns_per_user: int
    turns_per_conversation: int
    pool_sentences: int  # sentences embedded for the corpus
    query_sentences: int  # held-out sentences used as queries
    recall_requests: int  # Recall calls per concurrency setting
    remember_requests: int
    ann_queries: int  # queries per scope for k-NN vs exact

    @property
    def turns(self) -> int:
        """Turns in the corpus."""
        return self.tenants * self.users_per_tenant * self.turns_per_user


FULL = Scale(10, 20, 500, 20, 1500, 100, 360, 60, 40)
QUICK = Scale(4, 10, 250, 20, 500, 50, 120, 40, 20)

NOTES = (
    f"corpus (full run): {FULL.turns:,} turns = {FULL.tenants} tenants x "
    f"{FULL.users_per_tenant} users x {FULL.turns_per_user} turns, conversations of "
    f"{FULL.turns_per_conversation}; each turn two of {FULL.pool_sentences:,} distinct template "
    "sentences embedded once with all-MiniLM-L6-v2 (cached), its vector the normalised sum of "
    f"theirs, no pair used twice; queries: {FULL.query_sentences} held-out sentences; bulk-loaded "
    "(1,000 per request, 2 in flight) with refresh off, then refreshed; no force-merge",
    f"Recall = MemoryService.Recall(top_k={TOP_K}, recent_limit={RECENT_LIMIT}) over loopback "
    "gRPC: query embedding in the service, then one _msearch of `recent` + BM25 + filtered k-NN "
    "(40 candidates each, searched 8 deeper and the recent turns dropped client-side), RRF; "
    "c=N: N callers back to back (closed loop)",
    "index search only = OpenSearchMemoryIndex.search in the bench process with precomputed "
    "query vectors (no gRPC, no embedding); Remember = 2 messages: embedding, then one bulk with "
    "refresh=wait_for (refresh_interval 100 ms), default service",
    "CPU ms per Recall = CPU seconds of each process during the phase / calls; other processes = "
    "the rest of the machine (shared with other work) in the same span",
    "k-NN vs exact: recall@10 of the knn query (k=40 as search asks for top 10; k=10 too for the "
    "whole index) against script_score knn_score (innerproduct) exact top 10 with the same "
    f"filter, {FULL.ann_queries} queries per scope, tie-aware; miss rate = 1 - recall (report "
    "targets are upper bounds); scopes: whole index (graph search), one tenant (10% of the docs, "
    "filtered graph search), one user's visibility filter (~500 docs: Lucene searches exactly)",
    "quality: tests/data/recall_questions.json (158 passages as tenant documents, 61 questions: "
    "30 keyword, 21 paraphrase, 10 mixed) via MemoryIndex.search k=10; recall@5 = top 5 of it, "
    "MRR@10; BM25 only = zero query vector, dense only = empty query text, hybrid = both (RRF 60)",
    "percentiles are nearest-rank",
)

# Template slots: combinations give tens of thousands of distinct, meaningful sentences.
_TEMPLATES = (
    "My {relation} {name} {hobby} every {day}.",
    "I need to {task} before the {event} in {month}.",
    "Can you remind me how to {howto} in the {product}?",
    "The {product} shows error {code} whenever I {action}.",
    "We booked a {trip} to {city} for {duration} in {month}.",
    "My favourite {category} is {thing} because {reason}.",
    "The {meeting} with the {team} team moved to {day} at {time}.",
    "I am allergic to {food}, so please avoid it in {meal} ideas.",
    "Invoice {invoice} for {amount} euros is due on the {date} of {month}.",
    "Please summarise the {document} about {topic} for {name}.",
    "Order {invoice} with the {item} is {status}.",
    "{name} from the {team} team handles {topic} questions.",
)


def _options(choices: str) -> tuple[str, ...]:
    """A slot's values, written as one `|`-separated string."""
    return tuple(choices.split("|"))


_SLOTS: dict[str, tuple[str, ...]] = {
    "relation": _options("sister|brother|cousin|neighbour|friend|daughter|son|uncle"),
    "name": _options(
        "Anna|Biscuit|Clara|Diego|Elif|Farid|Greta|Hiro|Ines|Jonas|Kofi|Lena|Mateo|Nadia|"
        "Omar|Priya|Quentin|Rosa|Sven|Tariq"
    ),
    "hobby": _options(
        "goes climbing|plays the cello|bakes sourdough|runs along the river|practises judo|"
        "paints watercolours|repairs old bicycles|sings in a choir|plays chess online|"
        "goes birdwatching"
    ),
    "day": _options("Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"),
    "task": _options(
        "renew my passport|file the tax return|book the car service|pay the rent|"
        "send the contract|update my CV|buy a birthday present|cancel the gym|"
        "back up my laptop|call the insurance"
    ),
    "event": _options("trip|wedding|conference|move|exam|audit|launch|holiday"),
    "month": _options(
        "January|February|March|April|May|June|July|August|September|October|November|December"
    ),
    "howto": _options(
        "export a report|share a folder|reset my password|change the language|add a teammate|"
        "set a reminder|archive a project|enable dark mode|connect the calendar|"
        "download an invoice"
    ),
    "product": _options("mobile app|web app|desktop client|admin console|browser extension"),
    "code": tuple(f"E-{n}" for n in range(4001, 4041)),
    "action": _options(
        "upload a photo|sign in|open a file|save a draft|sync my calendar|print a page|"
        "search my notes|invite a guest"
    ),
    "trip": _options("city break|hiking trip|beach holiday|ski weekend|road trip"),
    "city": _options(
        "Lisbon|Kyoto|Oslo|Nairobi|Lima|Montreal|Seville|Hanoi|Tallinn|Cape Town|Porto|Reykjavik"
    ),
    "duration": _options("a weekend|five days|a week|ten days|two weeks"),
    "category": _options("book|film|band|dish|board game|podcast|city|season"),
    "thing": _options(
        "the one with the lighthouse|a slow jazz record|mushroom risotto|autumn|"
        "a detective series|the old harbour|a space opera|green curry"
    ),
    "reason": _options(
        "it reminds me of home|it makes me laugh|it is calm|my father loved it|"
        "it surprised me|it is honest"
    ),
    "meeting": _options("weekly sync|budget review|design critique|planning session|retro"),
    "team": _options("payments|design|support|data|security|mobile|sales|legal"),
    "time": _options("9 am|10:30|noon|2 pm|4:15 pm|5 pm"),
    "food": _options("peanuts|shellfish|gluten|sesame|dairy|eggs|soy|kiwi"),
    "meal": _options("dinner|lunch|breakfast|picnic|party"),
    "invoice": tuple(str(n) for n in range(58000, 58400, 7)),
    "amount": _options("120|349|89|1,200|15|640|72|2,050"),
    "date": _options("1st|5th|10th|15th|20th|28th"),
    "document": _options("report|proposal|meeting notes|contract|survey results|memo"),
    "topic": _options(
        "pricing|hiring|security|the roadmap|customer churn|the office move|travel policy|"
        "onboarding"
    ),
    "item": _options("standing desk|coffee grinder|winter tyres|rain jacket|desk lamp"),
    "status": _options(
        "held at customs|out for delivery|delayed by the courier|at the pickup locker|"
        "being packed|returned to the sender"
    ),
}


def sentence_pool(count: int, seed: int = SEED) -> list[str]:
    """`count` distinct template sentences, the same ones for the same seed."""
    generator = random.Random(seed)
    sentences: dict[str, None] = {}
    while len(sentences) < count:
        template = generator.choice(_TEMPLATES)
        fields = {
            slot: generator.choice(values)
            for slot, values in _SLOTS.items()
            if "{" + slot + "}" in template
        }
        sentences.setdefault(template.format(**fields), None)
    return list(sentences)


@dataclass(frozen=True, slots=True)
class Corpus:
    """The turns (as pool sentence pairs) and the query sentences with their vectors."""

    scale: Scale
    sentences: list[str]
    vectors: npt.NDArray[np.float32]  # one row per pool sentence
    pairs: npt.NDArray[np.int64]  # (turns, 2)
    queries: list[str]
    query_vectors: npt.NDArray[np.float32]

    def owner(self, turn: int) -> tuple[str, str, str]:
        """(tenant, user, conversation) of a turn."""
        per_user = self.scale.turns_per_user
        user = turn // per_user
        tenant = user // self.scale.users_per_tenant
        conversation = (turn % per_user) // self.scale.turns_per_conversation
        return f"tenant-{tenant}", f"user-{user}", f"conversation-{user}-{conversation}"

    def item(self, turn: int) -> MemoryItem:
        """The memory item of a turn."""
        tenant, user, conversation = self.owner(turn)
        first, second = self.pairs[turn]
        return MemoryItem(
            tenant_id=tenant,
            user_id=user,
            conversation_id=conversation,
            item_id=f"turn-{turn}",
            kind=ItemKind.TURN,
            role="user" if turn % 2 == 0 else "assistant",
            text=f"{self.sentences[first]} {self.sentences[second]}",
            created_at_ms=1_700_000_000_000 + turn * 1000,
            source="",
        )

    def turn_vectors(self, start: int, stop: int) -> npt.NDArray[np.float32]:
        """Unit vectors of turns start..stop-1."""
        pairs = self.pairs[start:stop]
        summed = self.vectors[pairs[:, 0]] + self.vectors[pairs[:, 1]]
        summed /= np.linalg.norm(summed, axis=1, keepdims=True)
        return summed.astype(np.float32)


def _cache_dir() -> Path:
    """Where embeddings of the sentence pool are kept between runs (next to the engines' cache)."""
    root = os.environ.get("CHATPLANE_CACHE_DIR") or str(Path.home() / ".cache" / "chatplane")
    return Path(root) / "bench"


def embed_cached(embedder: SentenceEmbedder, texts: list[str]) -> npt.NDArray[np.float32]:
    """The embeddings of `texts`, from the cache when this model embedded exactly these texts
    before; the corpus is deterministic, so only the first run pays (~10 s per 2,000 texts)."""
    digest = hashlib.sha256("\n".join([embedder.model_name, *texts]).encode()).hexdigest()
    path = _cache_dir() / f"recall-embeddings-{digest[:24]}.npy"
    with contextlib.suppress(OSError, ValueError):
        cached: npt.NDArray[np.float32] = np.load(path).astype(np.float32)
        if cached.shape == (len(texts), embedder.dimension):
            return cached
    vectors = embedder.embed(texts)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npy")
        np.save(partial, vectors)
        partial.replace(path)
    return vectors


def build_corpus(scale: Scale, embedder: SentenceEmbedder) -> Corpus:
    """Embeds the sentence pool and the queries and draws the turns' sentence pairs."""
    sentences = sentence_pool(scale.pool_sentences + scale.query_sentences)
    embedded = embed_cached(embedder, sentences)
    pool, queries = sentences[: scale.pool_sentences], sentences[scale.pool_sentences :]
    vectors, query_vectors = embedded[: scale.pool_sentences], embedded[scale.pool_sentences :]
    generator = np.random.default_rng(SEED)
    seen: set[tuple[int, int]] = set()
    pairs = np.empty((scale.turns, 2), dtype=np.int64)
    filled = 0
    while filled < scale.turns:
        for a, b in generator.integers(0, len(pool), size=(scale.turns, 2)).tolist():
            pair = (min(a, b), max(a, b))
            if a == b or pair in seen:
                continue
            seen.add(pair)
            pairs[filled] = (a, b)
            filled += 1
            if filled == scale.turns:
                break
    return Corpus(scale, pool, vectors, pairs, queries, query_vectors)


# --- OpenSearch -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def engines(state_dir: Path, options: Options) -> AsyncIterator[dict[str, str]]:
    """OpenSearch with the k-NN plugin, Kafka (the memory process of the cluster profile
    indexes turns from its messages topic) and PostgreSQL (the embedded profile's index, for the
    quality comparison), started by the project's script; yields their engines.env variables
    and brings them down (data removed) afterwards."""
    up = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ENGINES_PY),
        "up",
        "--only",
        "opensearch,kafka,postgres",
        "--state-dir",
        str(state_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await up.communicate()
        if up.returncode != 0:
            raise RuntimeError(f"engines.py up failed:\n{output.decode()[-4000:]}")
        env = dict(
            line.split("=", 1)
            for line in (state_dir / "engines.env").read_text().splitlines()
            if "=" in line and not line.startswith("#")
        )
        if env.get("CHATPLANE_OPENSEARCH_KNN") != "1":
            raise RuntimeError("OpenSearch started without the k-NN plugin")
        yield env
    finally:
        down = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ENGINES_PY),
            "down",
            "--state-dir",
            str(state_dir),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await down.wait()
        progress(options, f"{NAME}: OpenSearch down")


def _bulk_body(corpus: Corpus, start: int, stop: int) -> str:
    vectors = np.round(corpus.turn_vectors(start, stop).astype(np.float64), VECTOR_DECIMALS)
    lines = []
    for turn, vector in zip(range(start, stop), vectors.tolist(), strict=True):
        item = corpus.item(turn)
        lines.append(json.dumps({"index": {"_id": document_id(item.tenant_id, item.item_id)}}))
        lines.append(json.dumps(document_source(item, vector)))
    return "\n".join(lines) + "\n"


def load_corpus(client: opensearchpy.OpenSearch, index: str, corpus: Corpus) -> float:
    """Bulk-loads every turn with refresh off (two requests in flight), then refreshes; the
    seconds it took."""
    began = time.monotonic()
    client.indices.put_settings(index=index, body={"index": {"refresh_interval": "-1"}})

    def send(start: int) -> None:
        body = _bulk_body(corpus, start, min(start + BULK_DOCS, corpus.scale.turns))
        response = client.bulk(index=index, body=body, request_timeout=300)
        if response.get("errors"):
            failed = next(i for i in response["items"] if "error" in i["index"])
            raise RuntimeError(f"bulk load failed: {failed['index']['error'].get('type')}")

    # The JSON of the next request is built while the previous one is being indexed.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(send, s) for s in range(0, corpus.scale.turns, BULK_DOCS)]:
            future.result()
    client.indices.put_settings(index=index, body={"index": {"refresh_interval": "100ms"}})
    client.indices.refresh(index=index, request_timeout=300)
    return time.monotonic() - began


def segment_count(client: opensearchpy.OpenSearch, index: str) -> int:
    """Lucene segments of the index (each has its own HNSW graph)."""
    segments = client.indices.segments(index=index)
    shards = segments["indices"][index]["shards"].values()
    return sum(len(copy["segments"]) for copies in shards for copy in copies)


# --- (b) k-NN vs exact ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnnScope:
    """A filter scope of the k-NN vs exact comparison."""

    label: str
    filter: Callable[[int], dict[str, Any] | None]  # query number -> filter


def _knn_hits(
    client: opensearchpy.OpenSearch,
    index: str,
    vector: list[float],
    k: int,
    query_filter: dict[str, Any] | None,
) -> list[tuple[str, float]]:
    knn: dict[str, Any] = {"vector": vector, "k": k}
    if query_filter is not None:
        knn["filter"] = query_filter
    body = {"size": TOP_K, "_source": False, "query": {"knn": {"vector": knn}}}
    hits = client.search(index=index, body=body, request_timeout=60)["hits"]["hits"]
    return [(hit["_id"], float(hit["_score"])) for hit in hits]


def _exact_hits(
    client: opensearchpy.OpenSearch,
    index: str,
    vector: list[float],
    query_filter: dict[str, Any] | None,
) -> list[tuple[str, float]]:
    body = {
        "size": TOP_K,
        "_source": False,
        "query": {
            "script_score": {
                "query": {"bool": {"filter": [query_filter]}}
                if query_filter
                else {"match_all": {}},
                "script": {
                    "source": "knn_score",
                    "lang": "knn",
                    "params": {
                        "field": "vector",
                        "query_value": vector,
                        "space_type": "innerproduct",
                    },
                },
            }
        },
    }
    hits = client.search(index=index, body=body, request_timeout=120)["hits"]["hits"]
    return [(hit["_id"], float(hit["_score"])) for hit in hits]


def knn_recall(
    client: opensearchpy.OpenSearch, index: str, corpus: Corpus, scope: AnnScope, k: int
) -> float:
    """Mean recall@10 of the knn query against exact scoring; a k-NN hit scoring at least the
    exact 10th score counts (ties are not misses). Both scores are OpenSearch's innerproduct
    transform of the same stored vectors, so they compare directly."""
    total = 0.0
    queries = corpus.scale.ann_queries
    for number in range(queries):
        vector = corpus.query_vectors[number % len(corpus.query_vectors)].tolist()
        scope_filter = scope.filter(number)
        exact = _exact_hits(client, index, vector, scope_filter)
        approximate = _knn_hits(client, index, vector, k, scope_filter)
        if not exact:
            total += 1.0
            continue
        threshold = exact[-1][1] - 1e-6
        exact_ids = {doc for doc, _ in exact}
        found = sum(1 for doc, score in approximate if doc in exact_ids or score >= threshold)
        total += min(found, len(exact)) / len(exact)
    return total / queries


def ann_scopes(corpus: Corpus) -> list[AnnScope]:
    """Whole index, one tenant, one user's visibility filter."""
    scale = corpus.scale

    def tenant(number: int) -> dict[str, Any]:
        return {"term": {"tenant_id": f"tenant-{number % scale.tenants}"}}

    def user(number: int) -> dict[str, Any]:
        user_number = (number * 7) % (scale.tenants * scale.users_per_tenant)
        tenant_id = f"tenant-{user_number // scale.users_per_tenant}"
        return visibility_filter(tenant_id, f"user-{user_number}")

    return [
        AnnScope("whole index", lambda number: None),
        AnnScope("one tenant", tenant),
        AnnScope("one user (MemoryService filter)", user),
    ]


# --- (a) latency ------------------------------------------------------------------------------


@dataclass(slots=True)
class Latencies:
    """Latencies of one phase and its failures."""

    samples_ns: list[int] = field(default_factory=list)
    wall_seconds: float = 0.0
    errors: int = 0
    error_kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    short: int = 0  # Recall answers with fewer than TOP_K items
    usage: PhaseUsage = field(default_factory=PhaseUsage)

    def ms(self, fraction: float) -> float | None:
        """A nearest-rank percentile in milliseconds."""
        return ns_to_ms(percentile(self.samples_ns, fraction))


async def run_concurrently(
    call: Callable[[int], Awaitable[bool]], requests: int, concurrency: int
) -> Latencies:
    """`requests` calls of `call(number)` by `concurrency` workers back to back; `call`
    returns whether the answer was complete."""
    result = Latencies()
    numbers = iter(range(requests))

    async def worker() -> None:
        for number in numbers:
            began = time.perf_counter_ns()
            try:
                complete = await call(number)
            except Exception as error:  # a failed call is counted, the phase goes on
                result.errors += 1
                code = error.code().name if isinstance(error, grpc.aio.AioRpcError) else ""
                result.error_kinds[code or type(error).__name__] += 1
                continue
            result.samples_ns.append(time.perf_counter_ns() - began)
            result.short += not complete

    began = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall_seconds = time.monotonic() - began
    return result


def recall_request(corpus: Corpus, number: int) -> memory_pb2.RecallRequest:
    """A Recall of a pseudo-random user, conversation and query."""
    scale = corpus.scale
    generator = random.Random(number)
    user = generator.randrange(scale.tenants * scale.users_per_tenant)
    turn = user * scale.turns_per_user + generator.randrange(scale.turns_per_user)
    tenant_id, user_id, conversation_id = corpus.owner(turn)
    return memory_pb2.RecallRequest(
        tenant_id=tenant_id,
        user_id=user_id,
        conversation_id=conversation_id,
        query=corpus.queries[generator.randrange(len(corpus.queries))],
        recent_limit=RECENT_LIMIT,
        top_k=TOP_K,
    )


@contextlib.asynccontextmanager
async def memory_service(
    engine_env: dict[str, str], work: Path, options: Options
) -> AsyncIterator[tuple[memory_pb2_grpc.MemoryServiceAsyncStub, int]]:
    """The real MemoryService process, cluster profile, on a free port: its stub and pid."""
    env = {
        **os.environ,
        "CHATPLANE_PROFILE": "cluster",
        "CHATPLANE_OPENSEARCH_URL": engine_env["CHATPLANE_OPENSEARCH_URL"],
        "CHATPLANE_OPENSEARCH_INDEX": MEMORY_INDEX,
        "CHATPLANE_KAFKA_BOOTSTRAP": engine_env["CHATPLANE_KAFKA_BOOTSTRAP"],
        "CHATPLANE_DATA_DIR": str(work / "memory-data"),
        "CHATPLANE_HOST": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
        **options.env,
    }
    service = await ServiceProcess.start(
        "memory", ["--memory-port", "0"], env, work / "logs" / "memory.log"
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            yield memory_pb2_grpc.MemoryServiceStub(channel), service.process.pid
    finally:
        await service.stop(timeout=15)


@dataclass(slots=True)
class LatencyResults:
    """Every latency phase, by column."""

    recall: dict[str, Latencies] = field(default_factory=dict)
    index_search: dict[str, Latencies] = field(default_factory=dict)
    remember: Latencies = field(default_factory=Latencies)
    embed_ms: float | None = None
    embed_cpu_ms: float | None = None  # mean CPU time of one query embedding (bench process)


def _recall_call(
    stub: memory_pb2_grpc.MemoryServiceAsyncStub, corpus: Corpus, offset: int = 0
) -> Callable[[int], Awaitable[bool]]:
    async def recall(number: int) -> bool:
        request = recall_request(corpus, offset + number)
        response = await stub.Recall(request, timeout=CALL_TIMEOUT_SECONDS)
        return len(response.items) == TOP_K and len(response.recent) == RECENT_LIMIT

    return recall


def _remember_call(
    stub: memory_pb2_grpc.MemoryServiceAsyncStub, corpus: Corpus
) -> Callable[[int], Awaitable[bool]]:
    async def remember(number: int) -> bool:
        request = recall_request(corpus, number)
        now = int(time.time() * 1000)
        texts = (
            (resources_pb2.ROLE_USER, request.query),
            (resources_pb2.ROLE_ASSISTANT, corpus.sentences[number % len(corpus.sentences)]),
        )
        response = await stub.Remember(
            memory_pb2.RememberRequest(
                tenant_id=request.tenant_id,
                user_id=request.user_id,
                conversation_id=f"bench-remember-{number}",
                messages=[
                    memory_pb2.MemoryMessage(
                        message_id=f"remember-{number}-{side}",
                        role=role,
                        text=text,
                        create_time_unix_ms=now + side,
                    )
                    for side, (role, text) in enumerate(texts)
                ],
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        return response.remembered_count == len(texts)

    return remember


def _search_call(
    index: OpenSearchMemoryIndex, corpus: Corpus, offset: int = 0
) -> Callable[[int], Awaitable[bool]]:
    query_vectors = dict(zip(corpus.queries, corpus.query_vectors, strict=True))

    async def search(number: int) -> bool:
        request = recall_request(corpus, offset + number)
        found = await index.search(
            request.tenant_id, request.user_id, request.query, query_vectors[request.query], TOP_K
        )
        return bool(len(found) == TOP_K)

    return search


async def measure_latency(
    corpus: Corpus,
    engine_env: dict[str, str],
    work: Path,
    pids: dict[str, int],
    embedder: SentenceEmbedder,
    options: Options,
) -> LatencyResults:
    """Recall through MemoryService at c=1 and c=4, the index's own search at c=1 and c=4, and
    Remember at c=4."""
    url = engine_env["CHATPLANE_OPENSEARCH_URL"]
    results = LatencyResults()
    scale = corpus.scale
    progress(options, f"{NAME}: warming up OpenSearch ({JVM_WARMUP_SEARCHES} searches)")
    async with OpenSearchMemoryIndex(url, index=MEMORY_INDEX) as index:
        # A fresh JVM interprets the query paths until the JIT has compiled them.
        await run_concurrently(
            _search_call(index, corpus, offset=20_000_000), JVM_WARMUP_SEARCHES, CONCURRENCY
        )
    async with memory_service(engine_env, work, options) as (stub, service_pid):
        recall = _recall_call(stub, corpus)
        await run_concurrently(
            _recall_call(stub, corpus, offset=10_000_000), WARMUP_REQUESTS, CONCURRENCY
        )
        async with ProcessMonitor({**pids, "memory": service_pid}) as monitor:
            for concurrency in (1, CONCURRENCY):
                column = f"c={concurrency}"
                requests = scale.recall_requests if concurrency > 1 else scale.recall_requests // 3
                progress(options, f"{NAME}: Recall {column}, {requests} calls")
                with monitor.phase() as usage:
                    phase = await run_concurrently(recall, requests, concurrency)
                phase.usage = usage
                results.recall[column] = phase
                if phase.errors or phase.short:
                    progress(
                        options,
                        f"{NAME}: Recall {column}: {phase.short} incomplete, failed: "
                        f"{dict(phase.error_kinds)}",
                    )
        progress(options, f"{NAME}: Remember c={CONCURRENCY}")
        results.remember = await run_concurrently(
            _remember_call(stub, corpus), scale.remember_requests, CONCURRENCY
        )
        if results.remember.errors or results.remember.short:
            progress(options, f"{NAME}: Remember failed: {dict(results.remember.error_kinds)}")

    async with OpenSearchMemoryIndex(url, index=MEMORY_INDEX) as index:
        search = _search_call(index, corpus)
        await run_concurrently(search, WARMUP_REQUESTS, CONCURRENCY)
        for concurrency in (1, CONCURRENCY):
            column = f"c={concurrency}"
            requests = scale.recall_requests if concurrency > 1 else scale.recall_requests // 3
            progress(options, f"{NAME}: index search {column}")
            results.index_search[column] = await run_concurrently(search, requests, concurrency)

    samples = []
    cpu_began = time.process_time()
    for query in corpus.queries[:50]:
        began = time.perf_counter_ns()
        embedder.embed([query])
        samples.append(time.perf_counter_ns() - began)
    results.embed_cpu_ms = (time.process_time() - cpu_began) / len(samples) * 1000
    results.embed_ms = ns_to_ms(percentile(samples, 0.5))
    return results


# --- (c) quality ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Quality:
    """Recall@5 and MRR@10 of one ranking mode on one index."""

    recall_at_5: float
    mrr_at_10: float
    recall_at_5_by_style: dict[str, float]


MODES = ("BM25 only", "dense only", "hybrid")


@dataclass(frozen=True, slots=True)
class QualitySet:
    """The labelled set with its passages and questions embedded."""

    passages: list[MemoryItem]
    passage_vectors: npt.NDArray[np.float32]
    questions: list[dict[str, Any]]
    question_vectors: npt.NDArray[np.float32]


def quality_set(embedder: SentenceEmbedder, path: Path = QUESTIONS_PATH) -> QualitySet:
    """The passages as documents of one tenant, and the questions, embedded (cached)."""
    loaded = json.loads(path.read_text(encoding="utf-8"))
    passages = [
        MemoryItem(
            tenant_id="quality",
            user_id="",
            conversation_id="",
            item_id=p["id"],
            kind=ItemKind.DOCUMENT,
            role="",
            text=p["text"],
            created_at_ms=0,
            source=path.name,
        )
        for p in loaded["passages"]
    ]
    questions: list[dict[str, Any]] = loaded["questions"]
    vectors = embed_cached(embedder, [p.text for p in passages] + [q["text"] for q in questions])
    return QualitySet(passages, vectors[: len(passages)], questions, vectors[len(passages) :])


async def measure_quality(index: MemoryIndex, labelled: QualitySet) -> dict[str, Quality]:
    """Stores the passages and scores each ranking mode over the questions."""
    await index.upsert(labelled.passages, labelled.passage_vectors)
    zero = np.zeros(labelled.question_vectors.shape[1], dtype=np.float32)
    scores: dict[str, Quality] = {}
    for mode in MODES:
        recall_sum = reciprocal_sum = 0.0
        by_style: dict[str, list[float]] = {}
        for question, vector in zip(labelled.questions, labelled.question_vectors, strict=True):
            text = "" if mode == "dense only" else question["text"]
            found = await index.search(
                "quality", "anyone", text, zero if mode == "BM25 only" else vector, 10
            )
            ranking = [r.item.item_id for r in found]
            relevant = set(question["relevant"])
            recall = len(relevant & set(ranking[:5])) / len(relevant)
            recall_sum += recall
            by_style.setdefault(question["style"], []).append(recall)
            rank = next((i for i, item in enumerate(ranking, 1) if item in relevant), None)
            reciprocal_sum += 1.0 / rank if rank else 0.0
        count = len(labelled.questions)
        scores[mode] = Quality(
            recall_sum / count,
            reciprocal_sum / count,
            {style: sum(values) / len(values) for style, values in by_style.items()},
        )
    return scores


# --- the benchmark ----------------------------------------------------------------------------


@dataclass(slots=True)
class Measurements:
    """Everything one run measured."""

    load_seconds: float = 0.0
    segments: int = 0
    latency: LatencyResults = field(default_factory=LatencyResults)
    ann: dict[tuple[str, int], float] = field(default_factory=dict)  # (scope, k) -> recall
    quality: dict[str, dict[str, Quality]] = field(default_factory=dict)  # index -> mode ->


def _prepare(scale: Scale) -> tuple[SentenceEmbedder, Corpus]:
    embedder = SentenceEmbedder()
    return embedder, build_corpus(scale, embedder)


async def run(options: Options) -> list[Row]:
    """Starts OpenSearch, loads the corpus, measures, and returns the rows."""
    scale = QUICK if options.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="chatplane-bench-recall-"))
    measured = Measurements()
    try:
        progress(
            options, f"{NAME}: starting OpenSearch, embedding {scale.pool_sentences:,} sentences"
        )
        # The corpus is embedded while OpenSearch starts.
        preparing = asyncio.ensure_future(asyncio.to_thread(_prepare, scale))
        async with engines(work / "engines", options) as engine_env:
            url = engine_env["CHATPLANE_OPENSEARCH_URL"]
            embedder, corpus = await preparing
            client = opensearchpy.OpenSearch(hosts=[url], timeout=120)
            try:
                await OpenSearchMemoryIndex(url, index=MEMORY_INDEX).ensure_index()
                progress(options, f"{NAME}: bulk-loading {scale.turns:,} turns")
                measured.load_seconds = await asyncio.to_thread(
                    load_corpus, client, MEMORY_INDEX, corpus
                )
                measured.segments = await asyncio.to_thread(segment_count, client, MEMORY_INDEX)
                pids = {
                    "opensearch": int(engine_env["CHATPLANE_OPENSEARCH_PID"]),
                    "kafka": int(engine_env["CHATPLANE_KAFKA_PID"]),
                    "bench": os.getpid(),
                }
                progress(options, f"{NAME}: k-NN vs exact")
                for scope in ann_scopes(corpus):
                    # k=10 as well only where Lucene runs the graph search unfiltered.
                    for k in (
                        (TOP_K, SEARCH_CANDIDATES)
                        if scope.filter(0) is None
                        else (SEARCH_CANDIDATES,)
                    ):
                        measured.ann[(scope.label, k)] = await asyncio.to_thread(
                            knn_recall, client, MEMORY_INDEX, corpus, scope, k
                        )
                measured.latency = await measure_latency(
                    corpus, engine_env, work, pids, embedder, options
                )
                progress(options, f"{NAME}: quality")
                labelled = await asyncio.to_thread(quality_set, embedder)
                indexes: dict[str, MemoryIndex] = {
                    "embedded": PostgresMemoryIndex(engine_env["CHATPLANE_POSTGRES_DSN"]),
                    "opensearch": OpenSearchMemoryIndex(url, index=QUALITY_INDEX),
                }
                for name, index in indexes.items():
                    async with index:
                        measured.quality[name] = await measure_quality(index, labelled)
            finally:
                client.close()
    finally:
        if options.keep_data:
            progress(options, f"{NAME}: logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    progress(options, f"{NAME}: done")
    return rows(measured, scale)


def rows(measured: Measurements, scale: Scale) -> list[Row]:
    """The table: latency columns c=1 and c=4; the load, k-NN and
    quality numbers in per-index columns."""
    latency = measured.latency
    c4 = f"c={CONCURRENCY}"
    recall_columns = list(latency.recall)

    def recall_ms(fraction: float) -> dict[str, float | None]:
        return {column: phase.ms(fraction) for column, phase in latency.recall.items()}

    def search_ms(fraction: float) -> dict[str, float | None]:
        return {column: phase.ms(fraction) for column, phase in latency.index_search.items()}

    out = [
        Row(NAME, "stored turns", "", {"opensearch": float(scale.turns)}, precision=0),
        Row(NAME, "bulk load + refresh", "s", {"opensearch": measured.load_seconds}, precision=1),
        Row(
            NAME,
            "Lucene segments after load",
            "",
            {"opensearch": float(measured.segments)},
            precision=0,
        ),
        Row(NAME, "Recall k=10 via MemoryService p50", "ms", recall_ms(0.5)),
        Row(NAME, "Recall k=10 via MemoryService p99", "ms", recall_ms(0.99), Target(25, c4)),
        Row(NAME, "Recall k=10 via MemoryService max", "ms", recall_ms(1.0)),
        Row(
            NAME,
            "Recall throughput",
            "1/s",
            {c: len(p.samples_ns) / p.wall_seconds for c, p in latency.recall.items()},
            precision=0,
        ),
        Row(
            NAME,
            "Recall failed or incomplete answers",
            "",
            {c: float(p.errors + p.short) for c, p in latency.recall.items()},
            Target(0, op="=="),
            precision=0,
        ),
        Row(NAME, "index search only p50", "ms", search_ms(0.5)),
        Row(NAME, "index search only p99", "ms", search_ms(0.99)),
        Row(NAME, "query embedding p50, bench process", "ms", {"c=1": latency.embed_ms}),
        Row(
            NAME,
            "query embedding CPU (mean), bench process",
            "ms",
            {"c=1": latency.embed_cpu_ms},
        ),
        Row(NAME, "Remember (2 messages) p50", "ms", {c4: latency.remember.ms(0.5)}),
        Row(NAME, "Remember (2 messages) p99", "ms", {c4: latency.remember.ms(0.99)}),
        Row(
            NAME,
            "Remember failed",
            "",
            {c4: float(latency.remember.errors + latency.remember.short)},
            Target(0, op="=="),
            precision=0,
        ),
    ]
    processes = sorted({p for phase in latency.recall.values() for p in phase.usage.cpu_seconds})
    for process in processes:
        out.append(
            Row(
                NAME,
                f"CPU ms per Recall: {process}",
                "ms",
                {
                    c: 1000 * p.usage.cpu_seconds.get(process, 0.0) / max(1, len(p.samples_ns))
                    for c, p in latency.recall.items()
                    if c in recall_columns
                },
                precision=1,
            )
        )
    out.append(
        Row(
            NAME,
            "CPU ms per Recall: other processes",
            "ms",
            {
                c: 1000 * p.usage.other_cpu_seconds / max(1, len(p.samples_ns))
                for c, p in latency.recall.items()
            },
            precision=1,
        )
    )
    for (scope, k), value in measured.ann.items():
        out.append(
            Row(
                NAME,
                f"k-NN recall@10 vs exact, {scope}, k={k}",
                "",
                {"opensearch": value},
                precision=3,
            )
        )
    for (scope, k), value in measured.ann.items():
        if k == SEARCH_CANDIDATES:
            out.append(
                Row(
                    NAME,
                    f"k-NN miss rate (1 - recall@10), {scope}, k={k}",
                    "",
                    {"opensearch": 1.0 - value},
                    Target(0.05),
                    precision=3,
                )
            )
    for metric in ("recall@5", "MRR@10"):
        for mode in MODES:
            values: dict[str, float | None] = {
                name: q[mode].recall_at_5 if metric == "recall@5" else q[mode].mrr_at_10
                for name, q in measured.quality.items()
            }
            out.append(Row(NAME, f"quality {metric}, {mode}", "", values, precision=3))
    styles = sorted(
        {s for q in measured.quality.values() for m in q.values() for s in m.recall_at_5_by_style}
    )
    for style in styles:
        for mode in MODES:
            by_index: dict[str, float | None] = {
                name: q[mode].recall_at_5_by_style.get(style)
                for name, q in measured.quality.items()
            }
            out.append(
                Row(NAME, f"quality recall@5, {mode}, {style} questions", "", by_index, precision=3)
            )
    return out

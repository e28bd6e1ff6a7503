"""Ingestion benchmark: documents uploaded through the Gateway (`IngestDocument`, the path of
`chatplane ingest`) into the embedded index, by size; then what a tenant's document library
costs a turn: the time to first token of the offline model (which answers at once) for a
question recalled over the tenant's documents, against a tenant with none."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

from bench.harness import Options, create_keys, progress, running_stack, user_channel
from bench.report import Row
from bench.stats import ns_to_ms, percentile
from chatplane.memory.chunking import chunk_text
from chatplane.memory.embedding import SentenceEmbedder
from chatplane.v1 import gateway_pb2, gateway_pb2_grpc

NAME = "ingest"
TITLE = "ingest: document ingestion through the Gateway and recall over documents (embedded)"
NOTES = (
    "Chunks of about 1,000 characters (the default), embedded by all-MiniLM-L6-v2 on ONNX "
    "Runtime in the Memory process (one low-priority thread) and stored in the embedded index.",
    "TTFT: offline model with a 0 s first-token delay, so it is Gateway + Agent + Recall.",
)
SIZES = (10, 100, 500)  # chunks per document
PIECE = 64 * 1024
_WORDS = [
    "invoice",
    "refund",
    "warehouse",
    "forklift",
    "shipment",
    "pallet",
    "customs",
    "ferry",
    "timetable",
    "policy",
    "password",
    "account",
    "billing",
    "contract",
    "renewal",
    "quota",
    "region",
    "latency",
    "backup",
    "replica",
]
QUESTION = "What is the refund policy for pallet shipments through customs?"


def _document(chunks: int, rng: random.Random) -> bytes:
    paragraphs = []
    for _ in range(chunks):
        sentences = [
            " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 16))).capitalize() + "."
            for _ in range(10)
        ]
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs).encode()


async def _upload(name: str, content: bytes) -> AsyncIterator[gateway_pb2.IngestDocumentRequest]:
    yield gateway_pb2.IngestDocumentRequest(
        header=gateway_pb2.IngestDocumentHeader(name=name, mime_type="text/plain")
    )
    for start in range(0, len(content), PIECE):
        yield gateway_pb2.IngestDocumentRequest(content=content[start : start + PIECE])


async def _first_token_ns(
    stub: gateway_pb2_grpc.GatewayServiceStub, metadata: tuple[tuple[str, str], ...]
) -> int:
    began = time.perf_counter_ns()
    first = 0
    async for event in stub.Chat(
        gateway_pb2.ChatRequest(text=QUESTION), metadata=metadata, timeout=60
    ):
        if not first and event.WhichOneof("event") == "delta":
            first = time.perf_counter_ns() - began
    return first


async def _embedding_rate(rng: random.Random) -> float:
    """Chunks per second the embedder alone manages on this machine (the ceiling of
    ingestion), measured in this process on 256 chunks of the same text."""
    embedder = SentenceEmbedder()
    chunks = [chunk.text for chunk in chunk_text(_document(260, rng).decode())][:256]
    embedder.embed(chunks[:8])  # load and warm the model
    began = time.perf_counter()
    for start in range(0, len(chunks), 64):
        await asyncio.to_thread(embedder.embed, chunks[start : start + 64])
    return len(chunks) / (time.perf_counter() - began)


async def run(options: Options) -> list[Row]:
    """Ingests one document per size, then compares recall TTFT with and without documents."""
    env = {
        "CHATPLANE_LLM_BACKEND": "offline",
        "CHATPLANE_OFFLINE_FIRST_TOKEN_SECONDS": "0",
        "CHATPLANE_OFFLINE_TOKENS_PER_SECOND": "1000",
        "CHATPLANE_RATE_LIMIT_PER_MINUTE": "100000",
        "CHATPLANE_RATE_LIMIT_BURST": "10000",
    }
    rng = random.Random(7)
    turns = 10 if options.quick else 40
    seconds: dict[str, float | None] = {}
    rates: dict[str, float | None] = {}
    async with running_stack(NAME, env, options) as stack:
        with_docs, without = await create_keys(stack, [("bench-docs", "u"), ("bench-none", "u")])
        channel = await user_channel(stack.info().address("gateway"))
        async with channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            docs_meta = (("authorization", f"Bearer {with_docs}"),)
            none_meta = (("authorization", f"Bearer {without}"),)
            for size in SIZES:
                content = _document(size, rng)
                began = time.perf_counter()
                response = await stub.IngestDocument(
                    _upload(f"doc-{size}.txt", content), metadata=docs_meta, timeout=600
                )
                elapsed = time.perf_counter() - began
                column = f"{response.document.chunk_count} chunks"
                seconds[column] = elapsed
                rates[column] = response.document.chunk_count / elapsed
                progress(options, f"{NAME}: {column} in {elapsed:.1f} s")
            ttft: dict[str, list[int]] = {"with": [], "without": []}
            for _ in range(turns):
                ttft["with"].append(await _first_token_ns(stub, docs_meta))
                ttft["without"].append(await _first_token_ns(stub, none_meta))
    total = int(sum(int(column.split()[0]) for column in seconds))
    embed_rate = await _embedding_rate(rng)
    rows = [
        Row(NAME, "ingestion time", "s", seconds),
        Row(NAME, "ingestion rate", "chunks/s", rates, precision=1),
        Row(
            NAME,
            "embedding alone (bench process, not niced, batches of 64)",
            "chunks/s",
            {"in process": embed_rate},
            precision=1,
        ),
    ]
    for fraction, label in ((0.5, "p50"), (0.99, "p99")):
        rows.append(
            Row(
                NAME,
                f"TTFT {label}, tenant with {total} document chunks vs none",
                "ms",
                {
                    "with documents": ns_to_ms(percentile(ttft["with"], fraction)),
                    "without": ns_to_ms(percentile(ttft["without"], fraction)),
                },
            )
        )
    return rows

"""The document library over the PostgreSQL memory index: ingestion stores every chunk or none,
limits are checked before anything is stored, deletion is tenant-scoped (document_library)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from chatplane.common import errors
from chatplane.memory.document_library import DocumentLibrary, DocumentLimits
from chatplane.memory.index.base import MemoryItem
from chatplane.memory.index.postgres import PostgresMemoryIndex

DIMENSION = 8
LIMITS = DocumentLimits(
    max_bytes=20_000, max_chunks=10, max_tenant_chunks=12, chunk_chars=200, overlap_chars=20
)


class HashEmbedder:
    """A deterministic stand-in for the sentence embedder: a vector from each text's hash."""

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        rows = [np.random.default_rng(abs(hash(t)) % 2**32).random(DIMENSION) for t in texts]
        return np.array(rows, dtype=np.float32).reshape(len(texts), DIMENSION)


class FailingIndex(PostgresMemoryIndex):
    """Fails the upsert after `good` successful ones."""

    def __init__(self, dsn: str, good: int) -> None:
        super().__init__(dsn, dimension=DIMENSION)
        self.good = good

    async def upsert(self, items: Sequence[MemoryItem], vectors: npt.NDArray[np.float32]) -> None:
        if self.good == 0:
            raise errors.Unavailable("disk full")
        self.good -= 1
        await super().upsert(items, vectors)


def text(chunks: int) -> bytes:
    return "\n\n".join(f"Paragraph {i}. " + "word " * 35 for i in range(chunks)).encode()


async def test_ingest_list_delete(postgres_database: str) -> None:
    index = PostgresMemoryIndex(postgres_database, dimension=DIMENSION)
    library = DocumentLibrary(HashEmbedder(), index, LIMITS)  # type: ignore[arg-type]
    try:
        summary = await library.ingest("t1", "a.txt", "text/plain", text(3))
        assert summary.chunk_count >= 3 and summary.name == "a.txt"
        assert await library.documents("t1") == [summary]
        assert await library.documents("t2") == []
        with pytest.raises(errors.NotFound):
            await library.delete("t2", summary.document_id)
        with pytest.raises(errors.NotFound):
            await library.delete("t1", "not-a-uuid")
        assert await library.delete("t1", summary.document_id) == summary.chunk_count
        assert await library.documents("t1") == []
    finally:
        library.close()
        await index.close()


async def test_limits_are_checked_before_anything_is_stored(postgres_database: str) -> None:
    index = PostgresMemoryIndex(postgres_database, dimension=DIMENSION)
    library = DocumentLibrary(HashEmbedder(), index, LIMITS)  # type: ignore[arg-type]
    try:
        with pytest.raises(errors.InvalidArgument) as too_big:
            await library.ingest("t", "big.txt", "text/plain", b"x" * 20_001)
        assert too_big.value.field == "content"
        with pytest.raises(errors.InvalidArgument, match="chunks") as too_many:
            await library.ingest("t", "long.txt", "text/plain", text(11))
        assert too_many.value.field == "content"
        await library.ingest("t", "one.txt", "text/plain", text(8))
        with pytest.raises(errors.ResourceExhausted) as quota:
            await library.ingest("t", "two.txt", "text/plain", text(5))
        assert quota.value.retry_after > 0
        assert [d.name for d in await library.documents("t")] == ["one.txt"]
    finally:
        library.close()
        await index.close()


async def test_a_failure_part_way_leaves_nothing_behind(postgres_database: str) -> None:
    index = FailingIndex(postgres_database, good=1)
    limits = DocumentLimits(
        max_bytes=10**6, max_chunks=500, max_tenant_chunks=10**4, chunk_chars=200, overlap_chars=0
    )
    library = DocumentLibrary(HashEmbedder(), index, limits)  # type: ignore[arg-type]
    try:
        # More than one batch of 64 chunks: the first batch is stored, the second fails.
        with pytest.raises(errors.Unavailable):
            await library.ingest("t", "big.txt", "text/plain", text(100))
        assert await library.documents("t") == []
    finally:
        library.close()
        await index.close()


async def test_a_chunk_is_read_whole_by_its_tenant_only(postgres_database: str) -> None:
    index = PostgresMemoryIndex(postgres_database, dimension=DIMENSION)
    library = DocumentLibrary(HashEmbedder(), index, LIMITS)  # type: ignore[arg-type]
    try:
        summary = await library.ingest("t1", "a.txt", "text/plain", text(3))
        last = summary.chunk_count - 1
        chunk = await library.chunk("t1", summary.document_id, last)
        assert (chunk.document_id, chunk.name) == (summary.document_id, "a.txt")
        assert (chunk.chunk_index, chunk.chunk_count) == (last, summary.chunk_count)
        assert chunk.text.strip() and "Paragraph 0." not in chunk.text
        assert (await library.chunk("t1", summary.document_id, 0)).text.startswith("Paragraph 0.")
        for tenant, chunk_index in (("t2", 0), ("t1", summary.chunk_count)):
            with pytest.raises(errors.NotFound):
                await library.chunk(tenant, summary.document_id, chunk_index)
        for document_id, chunk_index, field in (
            ("", 0, "document_id"),
            ("not-a-uuid", 0, "document_id"),
            (summary.document_id, -1, "chunk_index"),
        ):
            with pytest.raises(errors.InvalidArgument) as bad:
                await library.chunk("t1", document_id, chunk_index)
            assert bad.value.field == field
        with pytest.raises(errors.InvalidArgument) as no_tenant:
            await library.chunk("", summary.document_id, 0)
        assert no_tenant.value.field == "tenant_id"
    finally:
        library.close()
        await index.close()

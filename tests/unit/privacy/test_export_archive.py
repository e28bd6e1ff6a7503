"""The export archive writer (chatplane.privacy.export_archive): valid JSON whatever sections
are empty, chunks of at most CHUNK_BYTES that concatenate to the archive, memory paged."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from chatplane.internal.v1 import memory_pb2, privacy_pb2
from chatplane.privacy.export_archive import CHUNK_BYTES, archive_chunks
from chatplane.v1 import admin_resources_pb2, gateway_pb2, resources_pb2

Record = privacy_pb2.ExportUserRecordsResponse
OWNER = admin_resources_pb2.Owner(tenant_id="acme", user_id="alice")
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


class FakePersistence:
    @property
    def privacy(self) -> FakePersistence:
        """Stands in for PersistenceClient: the one service it fakes is itself."""
        return self

    def __init__(self, records: list[Record]) -> None:
        self.records = records

    def ExportUserRecords(self, request: Any, timeout: float) -> AsyncIterator[Record]:  # noqa: N802
        async def stream() -> AsyncIterator[Record]:
            for record in self.records:
                yield record

        return stream()


class FakeMemory:
    def __init__(self, pages: list[list[str]]) -> None:
        self.pages = pages
        self.tokens: list[str] = []

    async def ListUserMemory(  # noqa: N802
        self, request: memory_pb2.ListUserMemoryRequest, timeout: float
    ) -> memory_pb2.ListUserMemoryResponse:
        self.tokens.append(request.page_token)
        index = len(self.tokens) - 1
        items = [
            memory_pb2.UserMemoryItem(
                item_id=text, conversation_id="c1", role=resources_pb2.ROLE_USER, text=text
            )
            for text in self.pages[index]
        ]
        last = index == len(self.pages) - 1
        return memory_pb2.ListUserMemoryResponse(
            items=items, next_page_token="" if last else f"p{index + 1}"
        )


async def build(
    records: list[Record], pages: list[list[str]]
) -> tuple[dict[str, Any], list[bytes]]:
    memory = FakeMemory(pages)
    chunks = [
        chunk
        async for chunk in archive_chunks(
            FakePersistence(records),  # type: ignore[arg-type]
            memory,  # type: ignore[arg-type]
            OWNER,
            export_timeout=10,
            call_timeout=lambda: 5,
            now=NOW,
        )
    ]
    return json.loads(b"".join(chunks)), chunks


def message(message_id: str, text: str) -> Record:
    return Record(
        message=resources_pb2.Message(
            message_id=message_id, conversation_id="c1", role=resources_pb2.ROLE_USER, text=text
        )
    )


async def test_an_empty_user_is_an_empty_archive() -> None:
    archive, _ = await build([], [[]])
    assert archive == {
        "format": "chatplane.user-export",
        "version": 1,
        "tenant_id": "acme",
        "user_id": "alice",
        "export_time": "2026-11-24T12:00:00.000000Z",
        "conversations": [],
        "answers": [],
        "feedback": [],
        "memory": [],
        "counts": dict.fromkeys(("conversations", "messages", "answers", "feedback", "memory"), 0),
    }


async def test_sections_nest_and_skip_empty_ones() -> None:
    records = [
        Record(conversation=resources_pb2.Conversation(conversation_id="c1", title="t")),
        message("m1", 'a "quoted"\nline ü'),
        message("m2", "second"),
        Record(conversation=resources_pb2.Conversation(conversation_id="c2")),
        Record(
            feedback=privacy_pb2.ExportedFeedback(
                message_id="m2", rating=gateway_pb2.RATING_THUMBS_DOWN, comment="meh"
            )
        ),
    ]
    archive, _ = await build(records, [["x", "y"], ["z"]])
    assert [c["conversation_id"] for c in archive["conversations"]] == ["c1", "c2"]
    assert [m["text"] for m in archive["conversations"][0]["messages"]] == [
        'a "quoted"\nline ü',
        "second",
    ]
    assert archive["conversations"][1]["messages"] == []
    assert archive["answers"] == []
    assert archive["feedback"][0]["rating"] == "thumbs_down"
    assert archive["feedback"][0]["score"] is None
    assert [m["text"] for m in archive["memory"]] == ["x", "y", "z"]
    assert archive["counts"]["messages"] == 2


async def test_large_archives_are_chunked() -> None:
    big = "é" * 40_000  # 80 kB of UTF-8 per message
    records = [Record(conversation=resources_pb2.Conversation(conversation_id="c1"))]
    records += [message(f"m{i}", big) for i in range(10)]
    archive, chunks = await build(records, [[]])
    assert len(chunks) > 10
    assert all(len(chunk) <= CHUNK_BYTES for chunk in chunks)
    assert all(m["text"] == big for m in archive["conversations"][0]["messages"])


class CancellableRecords:
    """A records call that knows whether it was cancelled."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[Record]:
        async def stream() -> AsyncIterator[Record]:
            for record in self.records:
                yield record

        return stream()

    def cancel(self) -> bool:
        self.cancelled = True
        return True


async def test_a_caller_going_away_ends_the_persistence_read() -> None:
    big = "x" * CHUNK_BYTES
    call = CancellableRecords(
        [Record(conversation=resources_pb2.Conversation(conversation_id="c1"))]
        + [message(f"m{i}", big) for i in range(5)]
    )

    class Persistence:
        @property
        def privacy(self) -> Persistence:
            return self

        def ExportUserRecords(self, request: Any, timeout: float) -> CancellableRecords:  # noqa: N802
            return call

    chunks = archive_chunks(
        Persistence(),  # type: ignore[arg-type]
        FakeMemory([[]]),  # type: ignore[arg-type]
        OWNER,
        export_timeout=10,
        call_timeout=lambda: 5,
    )
    await anext(chunks)
    await anext(chunks)
    await chunks.aclose()
    assert call.cancelled

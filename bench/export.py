"""Export benchmark (docs/privacy.md, "Export"): how fast one user's archive is produced from
the embedded system of record and how much memory it takes, for users of 1,000 to 50,000
messages. The path measured is PrivacyService.ExportUserRecords' servicer (store pages,
the tree of each conversation, answer facts and feedback) feeding the archive writer
(chatplane.privacy.export_archive) in one process, without the network; memory is the peak
of the Python heap (tracemalloc) while exporting, which must not grow with the user's size."""

from __future__ import annotations

import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.embedded_store import embedded_postgres
from bench.harness import Options, progress
from bench.report import Row, Target
from chatplane.common.ids import new_id
from chatplane.internal.v1 import memory_pb2, privacy_pb2
from chatplane.persistence.store.base import (
    Feedback,
    Message,
    MessageStatus,
    Owner,
    Rating,
    Role,
)
from chatplane.persistence.store.postgres import PostgresConversationStore
from chatplane.persistence.user_records import UserRecords
from chatplane.privacy.export_archive import archive_chunks
from chatplane.v1 import admin_resources_pb2

NAME = "export"
TITLE = "export: one user's archive from the embedded PostgreSQL, by the user's size"
NOTES = (
    "In-process (no gRPC hop): the servicer's store reads and the JSON writer; "
    "each message ~150 bytes of text, conversations of 1,000 messages, every 10th answer rated.",
    "The rate is of a run without tracemalloc; the peak heap of a second run with it.",
)

SIZES = (1_000, 10_000, 50_000)
QUICK_SIZES = (1_000, 5_000)
PER_CONVERSATION = 1_000
TARGET_PEAK_MB = 32.0
_TEXT = "a chat message of about the usual length, asking something about an order " * 2


class _Privacy:
    """PrivacyService's ExportUserRecords over the store, in process (no gRPC hop)."""

    def __init__(self, records: UserRecords) -> None:
        self._records = records

    def ExportUserRecords(  # noqa: N802 (the stub's name)
        self, request: privacy_pb2.ExportUserRecordsRequest, timeout: float
    ) -> AsyncIterator[privacy_pb2.ExportUserRecordsResponse]:
        owner = Owner(request.owner.tenant_id, request.owner.user_id)
        return self._records.records(owner, request.page_size or 200)


class _Persistence:
    """What archive_chunks uses of a PersistenceClient."""

    def __init__(self, records: UserRecords) -> None:
        self.privacy = _Privacy(records)


class _Memory:
    async def ListUserMemory(  # noqa: N802
        self, request: memory_pb2.ListUserMemoryRequest, timeout: float
    ) -> memory_pb2.ListUserMemoryResponse:
        return memory_pb2.ListUserMemoryResponse()


async def _seed(store: PostgresConversationStore, owner: Owner, count: int) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rated: list[str] = []
    for first in range(0, count, PER_CONVERSATION):
        conversation_id = new_id()
        batch = []
        for index in range(first, min(count, first + PER_CONVERSATION)):
            role = Role.USER if index % 2 == 0 else Role.ASSISTANT
            message = Message(
                message_id=new_id(),
                conversation_id=conversation_id,
                owner=owner,
                role=role,
                text=_TEXT,
                status=MessageStatus.COMPLETE,
                create_time=start + timedelta(seconds=index),
                model="offline" if role is Role.ASSISTANT else "",
                variant="default" if role is Role.ASSISTANT else "",
            )
            batch.append(message)
            if role is Role.ASSISTANT and index % 20 == 1:
                rated.append(message.message_id)
        await store.write_messages(batch)
    for message_id in rated:
        await store.submit_feedback(owner, Feedback(message_id, Rating.THUMBS_UP, "ok", 4))


async def _export(
    store: PostgresConversationStore, owner: Owner, *, trace: bool
) -> tuple[int, float, float]:
    """Archive bytes, seconds, and with `trace` the peak heap in MB (else 0)."""
    persistence: Any = _Persistence(UserRecords(store))
    memory: Any = _Memory()
    size = 0
    if trace:
        tracemalloc.start()
    began = time.perf_counter()
    async for chunk in archive_chunks(
        persistence,
        memory,
        admin_resources_pb2.Owner(tenant_id=owner.tenant_id, user_id=owner.user_id),
        export_timeout=600,
        call_timeout=lambda: 10,
    ):
        size += len(chunk)
    elapsed = time.perf_counter() - began
    if not trace:
        return size, elapsed, 0.0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return size, elapsed, peak / 1e6


async def run(options: Options) -> list[Row]:
    sizes = QUICK_SIZES if options.quick else SIZES
    rates: dict[str, float | None] = {}
    peaks: dict[str, float | None] = {}
    archive: dict[str, float | None] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-export-") as directory,
        embedded_postgres(Path(directory)) as databases,
    ):
        store = await databases.open_store("store")
        try:
            for count in sizes:
                owner = Owner("bench-tenant", f"user-{count}")
                progress(options, f"export: seeding {count} messages")
                await _seed(store, owner, count)
                progress(options, f"export: exporting {count} messages")
                size, elapsed, _ = await _export(store, owner, trace=False)
                _, _, peak = await _export(store, owner, trace=True)
                column = f"{count:,} msgs"
                rates[column] = count / elapsed
                peaks[column] = peak
                archive[column] = size / 1e6
        finally:
            await store.close()
    largest = f"{sizes[-1]:,} msgs"
    return [
        Row(NAME, "messages exported per second", "msg/s", rates, precision=0),
        Row(NAME, "archive size", "MB", archive),
        Row(
            NAME,
            "peak Python heap while exporting",
            "MB",
            peaks,
            Target(TARGET_PEAK_MB, column=largest),
        ),
    ]

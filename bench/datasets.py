"""Feedback-dataset benchmark (docs/datasets.md): how fast the system of record pages rated
answers with their branches (AnalyticsService.ListRatedAnswers' work, without gRPC) on the
embedded store (PostgreSQL), and what the variant report's statistics add. One store on a
temporary file: CONVERSATIONS conversations of TURNS turns in 10 tenants, the last answer of
each rated, every other tenant redacting; then every page of 500 read to the end."""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.embedded_store import embedded_postgres
from bench.harness import Options, progress
from bench.report import Row, Target
from chatplane.common.ids import new_id
from chatplane.persistence.rated_answer_export import RatedAnswerExport
from chatplane.persistence.store.answer_metrics import RatedAnswerQuery
from chatplane.persistence.store.base import Feedback, Message, MessageStatus, Owner, Rating, Role
from chatplane.persistence.store.postgres import PostgresConversationStore
from chatplane.persistence.variant_significance import compare
from chatplane.privacy.policy import RedactionPolicy

NAME = "datasets"
TITLE = "datasets: rated answers with their branches, and the report's statistics (PostgreSQL)"
NOTES = (
    "Each answer's branch is read with the conversation-tree code (skeleton + texts): two "
    "point reads per answer on top of one query per page.",
    "Half the tenants redact: their texts also go through the PII detectors "
    "(phonenumbers, check digits).",
    "Statistics: Wilson and t intervals, Fisher and Welch tests for 5 variants "
    "(scipy), after its first import.",
)

CONVERSATIONS = 2000
QUICK_CONVERSATIONS = 200
TURNS = 3
TENANTS = tuple(f"tenant-{i}" for i in range(10))
PAGE = 500
# An export of a month of feedback (tens of thousands of answers) should take seconds to a
# minute, not hours: at most 5 ms of wall time per answer.
TARGET_WALL_MS_PER_ANSWER = 5.0
_TEXT = "a chat message of about the usual length, asking about order 1234 and delivery " * 2


async def _fill(store: PostgresConversationStore, conversations: int, start: datetime) -> None:
    for index in range(conversations):
        owner = Owner(TENANTS[index % len(TENANTS)], f"user-{index % 97}")
        conversation_id = new_id()
        parent = ""
        batch: list[Message] = []
        when = start + timedelta(seconds=index)
        for turn in range(TURNS):
            for role in (Role.USER, Role.ASSISTANT):
                message = Message(
                    message_id=new_id(),
                    conversation_id=conversation_id,
                    owner=owner,
                    role=role,
                    text=_TEXT,
                    status=MessageStatus.COMPLETE,
                    create_time=when + timedelta(milliseconds=2 * turn + (role is Role.ASSISTANT)),
                    parent_message_id=parent,
                    reply_to_message_id=parent if role is Role.ASSISTANT else "",
                    variant=f"v{index % 5}@1" if role is Role.ASSISTANT else "",
                )
                parent = message.message_id
                batch.append(message)
        await store.write_messages(batch)
        await store.submit_feedback(owner, Feedback(parent, Rating.THUMBS_UP, "", 4 + index % 2))


async def run(options: Options) -> list[Row]:
    conversations = QUICK_CONVERSATIONS if options.quick else CONVERSATIONS
    start = datetime.now(UTC) - timedelta(days=1)
    with (
        tempfile.TemporaryDirectory(prefix="bench-datasets-") as folder,
        embedded_postgres(Path(folder)) as databases,
    ):
        store = await databases.open_store("store")
        try:
            progress(options, f"{NAME}: storing {conversations} conversations")
            await _fill(store, conversations, start)
            export = RatedAnswerExport(
                store, frozenset(TENANTS), RedactionPolicy(frozenset(TENANTS[::2]))
            )
            wall = time.perf_counter()
            cpu = time.process_time()
            after = None
            exported = 0
            while True:
                page = await export.page(RatedAnswerQuery(TENANTS, start, None, 1, PAGE, after))
                exported += len(page.answers)
                if page.next_after is None:
                    break
                after = page.next_after
            wall = time.perf_counter() - wall
            cpu = time.process_time() - cpu
            assert exported == conversations, exported
            stats = await store.analytics.report_variants()
            compare(stats)  # the first call imports scipy
            began = time.perf_counter()
            for _ in range(20):
                compare(stats)
            statistics_ms = (time.perf_counter() - began) / 20 * 1000
        finally:
            await store.close()
    column = f"{conversations} answers"
    return [
        Row(
            NAME,
            "wall time per exported answer",
            "ms",
            {column: wall / exported * 1000},
            Target(TARGET_WALL_MS_PER_ANSWER),
        ),
        Row(NAME, "rated answers exported per second", "1/s", {column: exported / wall}, None, 0),
        Row(NAME, "CPU per exported answer", "ms", {column: cpu / exported * 1000}),
        Row(NAME, "report statistics (5 variants)", "ms", {column: statistics_ms}),
    ]

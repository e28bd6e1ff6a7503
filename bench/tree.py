"""Conversation-tree benchmark: what the tree costs on the embedded system of record (PostgreSQL,
the default profile), where it sits on the path to the first token (BeginTurn) and on history
reads. One store on a temporary server; conversations of 10, 100 and 1,000 stored messages,
linear and with branches (one regenerate at the start), continued by MEASURED turns (each
recorded after it is reserved, so the conversation grows by two messages per turn), then
the active branch read as GetConversation does (a page of 100). Reported as wall time and as
CPU time of the process per call (the store's thread and the loop; nothing else runs), which
stays meaningful on a loaded machine where wall times are mostly waiting for a core."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.embedded_store import embedded_postgres
from bench.harness import Options, progress
from bench.report import Row, Target
from bench.stats import ns_to_ms, percentile
from chatplane.common.ids import new_id
from chatplane.persistence.store.base import (
    ConversationView,
    Message,
    MessageStatus,
    Owner,
    Role,
    TurnRequest,
    TurnReservation,
)
from chatplane.persistence.store.postgres import PostgresConversationStore

NAME = "tree"
TITLE = "tree: BeginTurn and active-branch reads on the embedded PostgreSQL, by conversation size"
NOTES = (
    "A turn continuing a linear conversation is placed from point reads (its active leaf) "
    "and returns no branch: the Agent uses memory's recent messages, as before trees.",
    "With branches, BeginTurn reads the conversation's skeleton (ids, roles, parents of "
    "every message) to place the turn and returns the branch (8 messages with texts).",
    "History reads (either view) always read the skeleton.",
)

SIZES = (10, 100, 1000)
TURNS = 50
QUICK_TURNS = 10
OWNER = Owner("bench-tenant", "bench-user")
# CPU a turn in a 1,000-message conversation with branches may spend placing itself.
TARGET_BEGIN_CPU_MS = 10.0
_TEXT = "a chat message of about the usual length, asking something about an order " * 2


def _request(conversation_id: str, regenerate: str = "") -> TurnRequest:
    return TurnRequest(
        owner=OWNER,
        conversation_id=conversation_id,
        client_message_id="",
        user_message_id=new_id(),
        assistant_message_id=new_id(),
        title="bench",
        lease=timedelta(minutes=5),
        regenerate_message_id=regenerate,
        branch_limit=8,
    )


def _messages(reservation: TurnReservation, at: datetime) -> list[Message]:
    answer = Message(
        message_id=reservation.assistant_message_id,
        conversation_id=reservation.conversation_id,
        owner=OWNER,
        role=Role.ASSISTANT,
        text=_TEXT,
        status=MessageStatus.COMPLETE,
        create_time=at + timedelta(microseconds=1),
        reply_to_message_id=reservation.user_message_id,
        parent_message_id=reservation.user_message_id,
    )
    if reservation.regenerate:
        return [answer]
    question = Message(
        message_id=reservation.user_message_id,
        conversation_id=reservation.conversation_id,
        owner=OWNER,
        role=Role.USER,
        text=_TEXT,
        status=MessageStatus.COMPLETE,
        create_time=at,
        parent_message_id=reservation.parent_message_id,
    )
    return [question, answer]


@dataclass
class Samples:
    """Wall and CPU nanoseconds of each measured call."""

    wall: list[int] = field(default_factory=list)
    cpu: list[int] = field(default_factory=list)


class _Timed:
    def __init__(self, samples: Samples) -> None:
        self._samples = samples

    def __enter__(self) -> None:
        self._wall = time.perf_counter_ns()
        self._cpu = time.process_time_ns()

    def __exit__(self, *exc: object) -> None:
        self._samples.cpu.append(time.process_time_ns() - self._cpu)
        self._samples.wall.append(time.perf_counter_ns() - self._wall)


async def _turn(
    store: PostgresConversationStore,
    conversation_id: str,
    regenerate: str = "",
    samples: Samples | None = None,
) -> TurnReservation:
    with _Timed(samples if samples is not None else Samples()):
        reservation = await store.begin_turn(_request(conversation_id, regenerate))
    await store.write_messages(_messages(reservation, datetime.now(UTC)))
    return reservation


async def _measure(
    store: PostgresConversationStore, size: int, branched: bool, turns: int
) -> tuple[Samples, Samples]:
    first = await _turn(store, "")
    conversation_id = first.conversation_id
    if branched:
        await _turn(store, conversation_id, regenerate=first.user_message_id)
    while (
        await store.trees.page(OWNER, conversation_id, view=ConversationView.TREE, limit=1)
    ).conversation.message_count < size:
        await _turn(store, conversation_id)
    begins, reads = Samples(), Samples()
    for _ in range(turns):
        reservation = await _turn(store, conversation_id, samples=begins)
        assert (reservation.branch is not None) == branched
        with _Timed(reads):
            await store.trees.page(
                OWNER, conversation_id, view=ConversationView.ACTIVE_BRANCH, limit=100
            )
    return begins, reads


async def run(options: Options) -> list[Row]:
    """The rows of this benchmark."""
    turns = QUICK_TURNS if options.quick else TURNS
    results: dict[str, tuple[Samples, Samples]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="chatplane-bench-tree-") as folder,
        embedded_postgres(Path(folder)) as databases,
    ):
        store = await databases.open_store("store")
        try:
            for size in SIZES:
                for branched in (False, True):
                    label = f"{size} {'branched' if branched else 'linear'}"
                    progress(options, f"tree: {label}")
                    results[label] = await _measure(store, size, branched, turns)
        finally:
            await store.close()

    def wall(index: int, fraction: float) -> dict[str, float | None]:
        return {
            label: ns_to_ms(percentile(samples[index].wall, fraction))
            for label, samples in results.items()
        }

    def cpu(index: int) -> dict[str, float | None]:
        return {
            label: ns_to_ms(sum(samples[index].cpu) // len(samples[index].cpu))
            for label, samples in results.items()
        }

    return [
        Row(
            NAME,
            "BeginTurn CPU, mean",
            "ms",
            cpu(0),
            Target(TARGET_BEGIN_CPU_MS, column="1000 branched"),
        ),
        Row(NAME, "BeginTurn wall p50", "ms", wall(0, 0.5)),
        Row(NAME, "BeginTurn wall p99", "ms", wall(0, 0.99)),
        Row(NAME, "active branch read (page of 100) CPU, mean", "ms", cpu(1)),
        Row(NAME, "active branch read (page of 100) wall p50", "ms", wall(1, 0.5)),
    ]

"""The recent messages of a branch for a turn's prompt (TurnService.GetRecentMessages), read
from the system of record. A turn's messages are on the message log before the Persistence
consumer stores them; a follow-up sent the moment `done` arrived may ask before that, so the
read waits (bounded) while the branch holds messages of a live turn not stored yet: each batch
the consumer of this process stores wakes it, and it polls for those stored by another replica.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from chatplane.persistence.store.base import Message, Owner
from chatplane.persistence.store.tree import TurnPlan
from chatplane.persistence.store.tree_store import TreeSkeleton

# How often a waiting read looks again when no batch of this process woke it.
POLL_SECONDS = 0.05


class BranchReads(Protocol):
    """What the read needs of the store (its `trees`)."""

    async def skeleton(self, owner: Owner, conversation_id: str) -> TreeSkeleton: ...

    async def messages_by_id(
        self, owner: Owner, message_ids: Sequence[str]
    ) -> dict[str, Message]: ...


class BatchWait(Protocol):
    """Returns when the next batch is stored, or after `timeout` seconds."""

    async def wait(self, timeout: float) -> None: ...


@dataclass(frozen=True, slots=True)
class RecentMessages:
    """The stored messages of the branch, oldest first; `incomplete` when messages of a live
    turn were not stored in time and are left out."""

    messages: tuple[Message, ...]
    incomplete: bool


async def recent_messages(
    store: BranchReads,
    stored: BatchWait,
    owner: Owner,
    conversation_id: str,
    leaf_message_id: str,
    *,
    limit: int,
    wait_seconds: float,
) -> RecentMessages:
    """The newest `limit` messages of the branch ending at `leaf_message_id`. While some of
    them belong to a live turn and are not stored, waits up to `wait_seconds` for them. A turn
    that failed (lease released or expired) is not waited for. NotFound for a conversation
    not of the owner."""
    deadline = time.monotonic() + wait_seconds
    while True:
        tree = (await store.skeleton(owner, conversation_id)).tree()
        entries = tree.branch(TurnPlan(leaf_message_id, "", branched=False), limit)
        stored_ids = [entry.message_id for entry in entries if entry.stored]
        pending = len(stored_ids) < len(entries)
        remaining = deadline - time.monotonic()
        if not pending or remaining <= 0:
            found = await store.messages_by_id(owner, stored_ids)
            messages = tuple(found[i] for i in stored_ids if i in found)
            return RecentMessages(messages, incomplete=pending)
        await stored.wait(min(POLL_SECONDS, remaining))

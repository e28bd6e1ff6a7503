"""The batch write of the PostgreSQL store: a batch whose ids were looked up under its
conversations' locks is written with one binary COPY straight into `messages`, after its
conversations were created or counted. No staging table, no INSERT ... SELECT ... ON CONFLICT:
PostgreSQL's cheapest insert path (docs/postgres.md has the measurements and the argument why
nothing is lost or duplicated)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg.errors

from chatplane.persistence.store.base import Message, Role, derived_title
from chatplane.persistence.store.database import Connection
from chatplane.persistence.store.records import MESSAGE_COLUMNS, message_row

# The columns of MESSAGE_COLUMNS as PostgreSQL types, for the binary COPY.
_MESSAGE_TYPES = ("text",) * 8 + ("timestamptz", "text", "text", "int4", "int4") + ("text",) * 3


class LostRace(Exception):
    """What this transaction was about to write turned out to be taken (an idempotency key
    reserved by a concurrent caller, a message id stored for another conversation): roll back
    and run the whole transaction again, which then sees the winner and decides accordingly."""


async def record_conversations(
    connection: Connection, accepted: Sequence[Message], created: Sequence[str]
) -> None:
    """Create the batch's new conversations (titled after their first user message, starting
    at their oldest message) and add the accepted messages to every conversation's count and
    update time, in one round trip. Called before the COPY, because the messages' foreign key
    wants their conversations to exist; the counts are exact because the COPY then inserts
    every accepted message or the transaction fails."""
    growth: dict[str, list[Any]] = {}  # conversation -> [count, oldest, newest, title]
    for message in accepted:
        entry = growth.get(message.conversation_id)
        if entry is None:
            title = message.text if message.role is Role.USER else None
            growth[message.conversation_id] = [1, message.create_time, message.create_time, title]
            continue
        entry[0] += 1
        entry[1] = min(entry[1], message.create_time)
        entry[2] = max(entry[2], message.create_time)
        if entry[3] is None and message.role is Role.USER:
            entry[3] = message.text
    new = set(created)
    fresh = [(c, growth[c]) for c in created]
    known = [(c, g) for c, g in growth.items() if c not in new]
    owners = {m.conversation_id: m.owner for m in accepted}
    async with connection.pipeline():
        if fresh:
            await connection.execute(
                "INSERT INTO conversations (conversation_id, tenant_id, user_id, title,"
                " create_time, update_time, message_count)"
                " SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[],"
                " %b::timestamptz[], %b::timestamptz[], %b::int8[])",
                (
                    [c for c, _ in fresh],
                    [owners[c].tenant_id for c, _ in fresh],
                    [owners[c].user_id for c, _ in fresh],
                    [derived_title(g[3] or "") for _, g in fresh],
                    [g[1] for _, g in fresh],
                    [g[2] for _, g in fresh],
                    [g[0] for _, g in fresh],
                ),
            )
        if known:
            await connection.execute(
                "UPDATE conversations AS c SET message_count = c.message_count + g.added,"
                " update_time = greatest(c.update_time, g.newest)"
                " FROM unnest(%b::text[], %b::int8[], %b::timestamptz[])"
                " AS g (conversation_id, added, newest)"
                " WHERE c.conversation_id = g.conversation_id",
                ([c for c, _ in known], [g[0] for _, g in known], [g[2] for _, g in known]),
            )


async def copy_messages(
    connection: Connection,
    messages: Sequence[Message],
    now: datetime,
) -> None:
    """One binary COPY of the messages into `messages`, in batch order (so their positions
    follow it). A message id that is stored already fails the COPY on the primary key, which
    becomes LostRace: the caller's transaction rolls back and decides again."""
    statement = f"COPY messages ({MESSAGE_COLUMNS}, store_time) FROM STDIN (FORMAT BINARY)"
    try:
        async with connection.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types([*_MESSAGE_TYPES, "timestamptz"])
            for message in messages:
                await copy.write_row((*message_row(message), now))
    except psycopg.errors.UniqueViolation:
        raise LostRace from None

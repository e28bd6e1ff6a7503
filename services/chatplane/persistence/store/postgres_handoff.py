"""Human handoff on the PostgreSQL store: the `handoffs` table's reads and its one atomic
read-change-write (chatplane.persistence.store.handoff holds the rules)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from chatplane.common import errors
from chatplane.persistence.store.base import Owner, Rating
from chatplane.persistence.store.handoff import (
    HandoffChange,
    HandoffCursor,
    HandoffPage,
    HandoffState,
    apply_change,
    require_request_time,
    rules_column,
    stored_state,
)

Connection = psycopg.AsyncConnection[tuple[Any, ...]]

_COLUMNS = (
    "conversation_id, tenant_id, user_id, mode, trigger, reason, request_time,"
    " release_time, released_by, rules_fired"
)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def _state(row: tuple[Any, ...]) -> HandoffState:
    return stored_state(
        row[0],
        Owner(row[1], row[2]),
        row[3],
        row[4],
        row[5],
        _utc(row[6]),
        None if row[7] is None else _utc(row[7]),
        row[8],
        row[9],
    )


async def _owned_state(
    connection: Connection, owner: Owner, conversation_id: str, *, lock: bool
) -> HandoffState:
    # FOR UPDATE on the conversation serializes concurrent changes of its handoff, including
    # the first one (no handoffs row to lock yet).
    cursor = await connection.execute(
        "SELECT 1 FROM conversations WHERE conversation_id = %s AND tenant_id = %s"
        " AND user_id = %s" + (" FOR UPDATE" if lock else ""),
        (conversation_id, owner.tenant_id, owner.user_id),
    )
    if await cursor.fetchone() is None:
        raise errors.NotFound("conversation not found")
    cursor = await connection.execute(
        f"SELECT {_COLUMNS} FROM handoffs WHERE conversation_id = %s", (conversation_id,)
    )
    row = await cursor.fetchone()
    return HandoffState(conversation_id, owner) if row is None else _state(row)


async def get_handoff(connection: Connection, owner: Owner, conversation_id: str) -> HandoffState:
    """The state of the owner's conversation."""
    async with connection.transaction():
        return await _owned_state(connection, owner, conversation_id, lock=False)


async def change_handoff(
    connection: Connection,
    owner: Owner,
    conversation_id: str,
    change: HandoffChange,
    now: datetime,
) -> HandoffState:
    """Apply `change` in one transaction, the conversation row locked."""
    async with connection.transaction():
        current = await _owned_state(connection, owner, conversation_id, lock=True)
        state = apply_change(current, change, now)
        if state.changed:
            await connection.execute(
                f"INSERT INTO handoffs ({_COLUMNS})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (conversation_id) DO UPDATE SET mode = excluded.mode,"
                " trigger = excluded.trigger, reason = excluded.reason,"
                " request_time = excluded.request_time, release_time = excluded.release_time,"
                " released_by = excluded.released_by, rules_fired = excluded.rules_fired",
                (
                    conversation_id,
                    owner.tenant_id,
                    owner.user_id,
                    state.mode.value,
                    state.trigger.value if state.trigger else "",
                    state.reason,
                    require_request_time(state),
                    state.release_time,
                    state.released_by,
                    rules_column(state.rules_fired),
                ),
            )
    return state


async def list_handoffs(
    connection: Connection, tenant_id: str, limit: int, after: HandoffCursor | None
) -> HandoffPage:
    """The tenant's conversations in human mode, longest waiting first."""
    query = f"SELECT {_COLUMNS} FROM handoffs WHERE tenant_id = %s AND mode = 'human'"
    parameters: list[Any] = [tenant_id]
    if after is not None:
        query += " AND (request_time, conversation_id) > (%s, %s)"
        parameters += [after.request_time, after.conversation_id]
    query += " ORDER BY request_time, conversation_id LIMIT %s"
    cursor = await connection.execute(query, (*parameters, limit + 1))
    rows = await cursor.fetchall()
    states = tuple(_state(row) for row in rows[:limit])
    next_cursor = None
    if len(rows) > limit:
        last = states[-1]
        next_cursor = HandoffCursor(require_request_time(last), last.conversation_id)
    return HandoffPage(states, next_cursor)


async def tenant_handoff(
    connection: Connection, tenant_id: str, conversation_id: str
) -> HandoffState:
    """A conversation of the tenant that was ever handed off."""
    cursor = await connection.execute(
        f"SELECT {_COLUMNS} FROM handoffs WHERE conversation_id = %s AND tenant_id = %s",
        (conversation_id, tenant_id),
    )
    row = await cursor.fetchone()
    if row is None:
        raise errors.NotFound("conversation not found")
    return _state(row)


async def count_thumbs_down(
    connection: Connection, owner: Owner, message_id: str
) -> tuple[str, int]:
    """The conversation of the owner's message and its thumbs-down count."""
    cursor = await connection.execute(
        "SELECT conversation_id FROM messages WHERE message_id = %s AND tenant_id = %s"
        " AND user_id = %s",
        (message_id, owner.tenant_id, owner.user_id),
    )
    row = await cursor.fetchone()
    if row is None:
        raise errors.NotFound("message not found")
    cursor = await connection.execute(
        "SELECT count(*) FROM feedback f JOIN messages m ON m.message_id = f.message_id"
        " WHERE m.conversation_id = %s AND f.tenant_id = %s AND f.user_id = %s"
        " AND f.rating = %s",
        (row[0], owner.tenant_id, owner.user_id, Rating.THUMBS_DOWN.value),
    )
    counted = await cursor.fetchone()
    return str(row[0]), 0 if counted is None else int(counted[0])

"""Human handoff on the SQLite store: the `handoffs` table's reads and its one atomic
read-change-write (chatplane.persistence.store.handoff holds the rules)."""

from __future__ import annotations

import sqlite3
from typing import Any

from chatplane.common import errors
from chatplane.persistence.store.base import Owner, Rating, from_micros, to_micros
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
from chatplane.persistence.store.sqlite_transactions import write_transaction

_COLUMNS = (
    "conversation_id, tenant_id, user_id, mode, trigger, reason, request_time_us,"
    " release_time_us, released_by, rules_fired"
)


def _state(row: tuple[Any, ...]) -> HandoffState:
    return stored_state(
        row[0],
        Owner(row[1], row[2]),
        row[3],
        row[4],
        row[5],
        from_micros(row[6]),
        None if row[7] is None else from_micros(row[7]),
        row[8],
        row[9],
    )


def _owned_state(
    connection: sqlite3.Connection, owner: Owner, conversation_id: str
) -> HandoffState:
    found = connection.execute(
        "SELECT 1 FROM conversations WHERE conversation_id = ? AND tenant_id = ? AND user_id = ?",
        (conversation_id, owner.tenant_id, owner.user_id),
    ).fetchone()
    if found is None:
        raise errors.NotFound("conversation not found")
    row = connection.execute(
        f"SELECT {_COLUMNS} FROM handoffs WHERE conversation_id = ?", (conversation_id,)
    ).fetchone()
    return HandoffState(conversation_id, owner) if row is None else _state(row)


def get_handoff(owner: Owner, conversation_id: str, connection: sqlite3.Connection) -> HandoffState:
    """The state of the owner's conversation."""
    connection.execute("BEGIN")
    try:
        return _owned_state(connection, owner, conversation_id)
    finally:
        connection.execute("COMMIT")


def change_handoff(
    owner: Owner,
    conversation_id: str,
    change: HandoffChange,
    now_us: int,
    connection: sqlite3.Connection,
) -> HandoffState:
    """Apply `change` in one write transaction (BEGIN IMMEDIATE: no concurrent change)."""
    with write_transaction(connection):
        current = _owned_state(connection, owner, conversation_id)
        state = apply_change(current, change, from_micros(now_us))
        if state.changed:
            connection.execute(
                f"INSERT INTO handoffs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (conversation_id) DO UPDATE SET mode = excluded.mode,"
                " trigger = excluded.trigger, reason = excluded.reason,"
                " request_time_us = excluded.request_time_us,"
                " release_time_us = excluded.release_time_us,"
                " released_by = excluded.released_by, rules_fired = excluded.rules_fired",
                (
                    conversation_id,
                    owner.tenant_id,
                    owner.user_id,
                    state.mode.value,
                    state.trigger.value if state.trigger else "",
                    state.reason,
                    to_micros(require_request_time(state)),
                    None if state.release_time is None else to_micros(state.release_time),
                    state.released_by,
                    rules_column(state.rules_fired),
                ),
            )
    return state


def list_handoffs(
    tenant_id: str, limit: int, after: HandoffCursor | None, connection: sqlite3.Connection
) -> HandoffPage:
    """The tenant's conversations in human mode, longest waiting first."""
    query = f"SELECT {_COLUMNS} FROM handoffs WHERE tenant_id = ? AND mode = 'human'"
    parameters: list[Any] = [tenant_id]
    if after is not None:
        query += " AND (request_time_us, conversation_id) > (?, ?)"
        parameters += [to_micros(after.request_time), after.conversation_id]
    query += " ORDER BY request_time_us, conversation_id LIMIT ?"
    rows = connection.execute(query, (*parameters, limit + 1)).fetchall()
    states = tuple(_state(row) for row in rows[:limit])
    cursor = None
    if len(rows) > limit:
        last = states[-1]
        cursor = HandoffCursor(require_request_time(last), last.conversation_id)
    return HandoffPage(states, cursor)


def tenant_handoff(
    tenant_id: str, conversation_id: str, connection: sqlite3.Connection
) -> HandoffState:
    """A conversation of the tenant that was ever handed off."""
    row = connection.execute(
        f"SELECT {_COLUMNS} FROM handoffs WHERE conversation_id = ? AND tenant_id = ?",
        (conversation_id, tenant_id),
    ).fetchone()
    if row is None:
        raise errors.NotFound("conversation not found")
    return _state(row)


def count_thumbs_down(
    owner: Owner, message_id: str, connection: sqlite3.Connection
) -> tuple[str, int]:
    """The conversation of the owner's message and its thumbs-down count."""
    row = connection.execute(
        "SELECT conversation_id FROM messages WHERE message_id = ? AND tenant_id = ?"
        " AND user_id = ?",
        (message_id, owner.tenant_id, owner.user_id),
    ).fetchone()
    if row is None:
        raise errors.NotFound("message not found")
    count = connection.execute(
        "SELECT count(*) FROM feedback f JOIN messages m ON m.message_id = f.message_id"
        " WHERE m.conversation_id = ? AND f.tenant_id = ? AND f.user_id = ? AND f.rating = ?",
        (row[0], owner.tenant_id, owner.user_id, Rating.THUMBS_DOWN.value),
    ).fetchone()[0]
    return str(row[0]), int(count)

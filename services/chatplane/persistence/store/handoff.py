"""Human handoff in the system of record: a conversation's mode (bot or human), what changed
it, the rules that have fired in it, and `store.handoffs`: the `handoffs` table's reads and
its one atomic read-change-write.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from chatplane.common import errors
from chatplane.persistence.store.base import Owner, Rating, require_known_id, require_limit
from chatplane.persistence.store.database import Connection, Database, found
from chatplane.persistence.store.records import utc


class HandoffMode(enum.Enum):
    """Who answers in a conversation."""

    BOT = "bot"
    HUMAN = "human"


class HandoffTrigger(enum.Enum):
    """What made a conversation's last mode change."""

    USER = "user"
    EXPLICIT_REQUEST = "explicit_request"
    THUMBS_DOWN = "thumbs_down"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class HandoffChange:
    """A change to make: `mode` HUMAN hands over, BOT gives back. A change with a `rule`
    (its name) happens only if that rule has never fired in the conversation."""

    mode: HandoffMode
    trigger: HandoffTrigger
    actor_id: str
    reason: str = ""
    rule: str = ""


@dataclass(frozen=True, slots=True)
class HandoffState:
    """A conversation's handoff state; `changed` is True on the answer to a change that
    changed it. A conversation never handed off is BOT with no trigger and no times."""

    conversation_id: str
    owner: Owner
    mode: HandoffMode = HandoffMode.BOT
    trigger: HandoffTrigger | None = None
    reason: str = ""
    request_time: datetime | None = None
    release_time: datetime | None = None
    released_by: str = ""
    rules_fired: frozenset[str] = frozenset()
    changed: bool = False


@dataclass(frozen=True, slots=True)
class HandoffCursor:
    """Where a page of waiting conversations (longest waiting first) ended."""

    request_time: datetime
    conversation_id: str


@dataclass(frozen=True, slots=True)
class HandoffPage:
    """A page of a tenant's conversations in human mode; `next_cursor` None on the last."""

    handoffs: tuple[HandoffState, ...]
    next_cursor: HandoffCursor | None


def apply_change(current: HandoffState, change: HandoffChange, now: datetime) -> HandoffState:
    """The state after `change` (with `changed`), or `current` unchanged when the change
    is a no-op: the mode is already the one asked for, or the rule has fired before."""
    unchanged = replace(current, changed=False)
    if change.mode is current.mode or (change.rule and change.rule in current.rules_fired):
        return unchanged
    if change.mode is HandoffMode.HUMAN:
        fired = current.rules_fired | {change.rule} if change.rule else current.rules_fired
        return replace(
            current,
            mode=HandoffMode.HUMAN,
            trigger=change.trigger,
            reason=change.reason,
            request_time=now,
            rules_fired=fired,
            changed=True,
        )
    return replace(
        current,
        mode=HandoffMode.BOT,
        trigger=change.trigger,
        release_time=now,
        released_by=change.actor_id,
        changed=True,
    )


def require_request_time(state: HandoffState) -> datetime:
    """The request time of a stored state (every stored state has one)."""
    if state.request_time is None:
        raise errors.Unavailable("a stored handoff without a request time")
    return state.request_time


_COLUMNS = (
    "conversation_id, tenant_id, user_id, mode, trigger, reason, request_time,"
    " release_time, released_by, rules_fired"
)


def _state(row: tuple[Any, ...]) -> HandoffState:
    """A state from a row of _COLUMNS."""
    return HandoffState(
        conversation_id=row[0],
        owner=Owner(row[1], row[2]),
        mode=HandoffMode(row[3]),
        trigger=HandoffTrigger(row[4]),
        reason=row[5],
        request_time=utc(row[6]),
        release_time=None if row[7] is None else utc(row[7]),
        released_by=row[8],
        rules_fired=frozenset(row[9].split()),
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
    found(await cursor.fetchone(), "conversation")
    cursor = await connection.execute(
        f"SELECT {_COLUMNS} FROM handoffs WHERE conversation_id = %s", (conversation_id,)
    )
    row = await cursor.fetchone()
    return HandoffState(conversation_id, owner) if row is None else _state(row)


class Handoffs:
    """The `handoffs` table: conversations' modes, owner-scoped or for a tenant's operators."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, owner: Owner, conversation_id: str) -> HandoffState:
        """The handoff state of the owner's conversation (BOT when never handed off)."""
        require_known_id(conversation_id, "conversation")
        async with self._db.transaction() as connection:
            return await _owned_state(connection, owner, conversation_id, lock=False)

    async def change(
        self, owner: Owner, conversation_id: str, change: HandoffChange
    ) -> HandoffState:
        """Apply `change` to the owner's conversation atomically (its row locked); the
        answer's `changed` says whether anything changed (see apply_change)."""
        require_known_id(conversation_id, "conversation")
        now = self._db.clock()
        async with self._db.transaction() as connection:
            current = await _owned_state(connection, owner, conversation_id, lock=True)
            state = apply_change(current, change, now)
            if state.changed:
                await connection.execute(
                    f"INSERT INTO handoffs ({_COLUMNS})"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (conversation_id) DO UPDATE SET mode = excluded.mode,"
                    " trigger = excluded.trigger, reason = excluded.reason,"
                    " request_time = excluded.request_time,"
                    " release_time = excluded.release_time,"
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
                        " ".join(sorted(state.rules_fired)),
                    ),
                )
        return state

    async def waiting(
        self, tenant_id: str, *, limit: int, after: HandoffCursor | None = None
    ) -> HandoffPage:
        """Up to `limit` of the tenant's conversations in human mode, longest waiting
        first (oldest request), after `after`."""
        require_limit(limit)
        query = f"SELECT {_COLUMNS} FROM handoffs WHERE tenant_id = %s AND mode = 'human'"
        parameters: list[Any] = [tenant_id]
        if after is not None:
            query += " AND (request_time, conversation_id) > (%s, %s)"
            parameters += [after.request_time, after.conversation_id]
        query += " ORDER BY request_time, conversation_id LIMIT %s"
        rows = await self._db.fetchall(query, (*parameters, limit + 1))
        states = tuple(_state(row) for row in rows[:limit])
        next_cursor = None
        if len(rows) > limit:
            last = states[-1]
            next_cursor = HandoffCursor(require_request_time(last), last.conversation_id)
        return HandoffPage(states, next_cursor)

    async def of_tenant(self, tenant_id: str, conversation_id: str) -> HandoffState:
        """A conversation of the tenant that was ever handed off, with its owner (for
        operators); any other is NotFound."""
        require_known_id(conversation_id, "conversation")
        row = await self._db.fetchone(
            f"SELECT {_COLUMNS} FROM handoffs WHERE conversation_id = %s AND tenant_id = %s",
            (conversation_id, tenant_id),
        )
        return _state(found(row, "conversation"))

    async def count_thumbs_down(self, owner: Owner, message_id: str) -> tuple[str, int]:
        """The conversation of the owner's message and its number of thumbs-down ratings."""
        require_known_id(message_id, "message")
        async with self._db.connection() as connection:
            cursor = await connection.execute(
                "SELECT conversation_id FROM messages WHERE message_id = %s AND tenant_id = %s"
                " AND user_id = %s",
                (message_id, owner.tenant_id, owner.user_id),
            )
            row = found(await cursor.fetchone(), "message")
            cursor = await connection.execute(
                "SELECT count(*) FROM feedback f JOIN messages m ON m.message_id = f.message_id"
                " WHERE m.conversation_id = %s AND f.tenant_id = %s AND f.user_id = %s"
                " AND f.rating = %s",
                (row[0], owner.tenant_id, owner.user_id, Rating.THUMBS_DOWN.value),
            )
            counted = await cursor.fetchone()
        return str(row[0]), 0 if counted is None else int(counted[0])
